"""Faults: store outages, deletions mid-download, SIGTERM mid-extraction, folders vanishing
under a running server, SIGTERM under load. Real store, real processes, nothing lost."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from contract.manifest import MANIFEST_FILE, build_manifest, identity_bytes, list_version_files
from contract.names import IDENTITY_FILE
from contract.storage import S3Location, open_location, s3_client
from serving.client import ClientError, GrpcClient, RestClient
from serving.puller import Puller
from tests.conftest import MODELS_BUCKET, REPO, aws_env_of, run_cli, unique
from tests.integration.test_puller import publish_fake, read, wait_for
from tests.tiny_base import WIDTH
from tools.model_server import LocalServer
from tools.seaweed import SeaweedFS
from trainer.publish import publish

pytestmark = pytest.mark.slow


def stage_version(source: Path, target: Path) -> Path:
    """A copy of a version folder to publish under another number: files are hard links
    except the manifest, which publish() rewrites."""
    shutil.copytree(source, target, copy_function=os.link,
                    ignore=shutil.ignore_patterns(MANIFEST_FILE))
    return target


def publish_tiny(tiny_model, tmp: Path, models_uri: str, version: int) -> None:
    folder = stage_version(tiny_model.version_dir, tmp / f"stage-{version}-{uuid.uuid4().hex}")
    # What this copy is: another version of tiny (the puller refuses a copy whose identity
    # says otherwise). A new file, not the hard link's shared one.
    (folder / IDENTITY_FILE).unlink()
    (folder / IDENTITY_FILE).write_bytes(identity_bytes("tiny", version, tiny_model.classes))
    files = list_version_files(folder)
    manifest = build_manifest(model_name="tiny", version=version,
                              classes=tiny_model.classes, base_model={}, input_spec={},
                              metrics={}, dataset={}, files=files)
    publish(folder, files, manifest, models_uri, "tiny", version, quiet=True)


def test_store_outage_while_pull_watch_runs_keeps_the_server_serving(tiny_model, tmp_path):
    store = SeaweedFS(tmp_path / "store", access_key="o-" + uuid.uuid4().hex[:8],
                      secret_key=uuid.uuid4().hex)
    store.start()
    store.create_bucket("models")
    env = {**store.client_env(os.environ)}
    dest = tmp_path / "serve" / "tiny"
    server = LocalServer(["--model-name", "tiny", "--model-base-path", str(dest),
                          "--file-system-poll-wait-seconds", "0.5"], tmp_path / "server.log")
    log = (tmp_path / "puller.log").open("w+")
    image = tiny_model.files[0][1]
    with aws_env_of(store):
        puller = subprocess.Popen([sys.executable, "-m", "serving", "pull", "--source",
                                   "s3://models/tiny", "--dest", str(dest), "--watch",
                                   "--interval", "0.5"], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            publish_tiny(tiny_model, tmp_path, "s3://models", 1)
            wait_for(lambda: (dest / "1").is_dir())
            server.start(wait_for_model="tiny")
            store.stop()
            wait_for(lambda: "sync failed" in read(log))
            with GrpcClient(server.grpc_target) as client:
                for _ in range(5):  # the store is down: serving goes on, nothing is removed
                    assert client.classify([image], "tiny")[0].label in tiny_model.classes
            assert (dest / "1").is_dir() and puller.poll() is None
            store.start()
            s3_client.cache_clear()  # drop pooled connections to the stopped server
            publish_tiny(tiny_model, tmp_path, "s3://models", 2)
            with GrpcClient(server.grpc_target) as client:
                wait_for(lambda: [(v.version, v.state) for v in client.status("tiny")][0] ==
                         (2, "AVAILABLE"))
                assert client.classify([image], "tiny")[0].label in tiny_model.classes
        finally:
            assert server.stop() == 0
            puller.send_signal(signal.SIGTERM)
            assert puller.wait(60) == 0
            store.stop()


@pytest.mark.s3
def test_a_version_deleted_while_downloading_is_discarded(seaweed, tmp_path, monkeypatch):
    models = f"s3://{MODELS_BUCKET}/{unique('vanish')}"
    publish_fake(tmp_path, models, "m", 1)
    publish_fake(tmp_path, models, "m", 2)
    real_download = S3Location.download_file
    calls = []

    def download_then_delete(self, path, local, progress=None, size=None):
        real_download(self, path, local, progress, size)
        if "/m/2" in self.uri and not calls:  # after the first file of version 2...
            calls.append(path)
            remote = open_location(f"{models}/m/2")  # ...version 2 is deleted from the store
            remote.delete([e.path for e in remote.list_files()])

    monkeypatch.setattr(S3Location, "download_file", download_then_delete)
    dest = tmp_path / "serve" / "m"
    result = Puller(f"{models}/m", dest, keep=2, quiet=True).sync_once()
    assert calls
    assert result.rejected == {2: "deleted from the store while it was being downloaded"}
    assert result.local == [1]
    assert sorted(p.name for p in dest.iterdir()) == ["1"]  # no half version, no staging


def test_sigterm_during_feature_extraction_leaves_a_valid_cache(tiny_args, tmp_path):
    data, cache, models = tmp_path / "data", tmp_path / "cache", tmp_path / "models"
    # Enough images, one per batch, that the tiny base's pass lasts long enough to be hit.
    run_cli("trainer", "sample-data", "--output", str(data), "--per-class", "40", "--quiet",
            check=True)
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "train", "--data", str(data),
                             "--output", str(models), "--model-name", "m", *tiny_args,
                             "--cache", str(cache), "--batch-size", "1", "--quiet"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Looked at closely: on the tiny base the whole pass takes a few seconds.
    deadline = time.monotonic() + 300
    while len(list(cache.rglob("*.npy"))) < 4 and proc.poll() is None:
        assert time.monotonic() < deadline, "no cache entries after 300 s"
        time.sleep(0.01)
    seen = len(list(cache.rglob("*.npy")))
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    # Said in full when it fails: the run's own output, and how far it was when signalled.
    assert code == 128 + signal.SIGTERM, (f"exit {code} after SIGTERM at {seen} cache "
                                          f"entries; stderr: {proc.stderr.read()[-3000:]}")
    entries = list(cache.rglob("*.npy"))
    assert 4 <= len(entries) < 80, "the kill should land mid-extraction"
    for entry in entries:  # every entry is complete: atomic writes
        vector = np.load(entry)
        assert vector.shape == (WIDTH,) and np.isfinite(vector).all()
    assert not list(cache.rglob("*.tmp"))
    assert not models.exists() or not any(models.rglob(MANIFEST_FILE))

    proc = run_cli("trainer", "train", "--data", str(data), "--output", str(models),
                   "--model-name", "m", *tiny_args, "--cache", str(cache),
                   "--quiet", check=True)
    cached, computed = map(int, re.search(r"features (\d+) cached / (\d+) computed",
                                          proc.stdout).groups())
    assert cached >= len(entries) and cached + computed == 80


def test_server_survives_its_folder_vanishing_and_stops_cleanly_under_load(tiny_model,
                                                                           tmp_path):
    base = tmp_path / "tiny"
    stage_version(tiny_model.version_dir, base / "1")
    server = LocalServer(["--model-name", "tiny", "--model-base-path", str(base),
                          "--file-system-poll-wait-seconds", "0.3"], tmp_path / "server.log")
    server.start(wait_for_model="tiny")
    image = tiny_model.files[0][1]

    # The model folder disappears: the loaded version keeps serving from memory and its
    # status says so; the log says why nothing newer can come.
    shutil.rmtree(base / "1")
    time.sleep(1.5)
    with GrpcClient(server.grpc_target) as client:
        assert client.classify([image], "tiny")[0].label in tiny_model.classes
        assert [(v.version, v.state) for v in client.status("tiny")] == [(1, "AVAILABLE")]
    shutil.rmtree(base)
    time.sleep(1.5)
    with RestClient(server.rest_url) as client:
        assert client.classify([image], "tiny")[0].label in tiny_model.classes
    assert "removed from disk; still serving it from memory" in server.log_text()
    assert "could not find base path" in server.log_text()

    # SIGTERM while 4 clients keep sending: what was accepted completes; afterwards the
    # clients get "unavailable", never a server error.
    stop, outcomes = threading.Event(), []

    def client_loop(kind: str):
        client = GrpcClient(server.grpc_target, 60) if kind == "grpc" else \
            RestClient(server.rest_url, 60)
        with client:
            while not stop.is_set():
                try:
                    client.classify([image], "tiny")
                    outcomes.append("ok")
                except ClientError as e:
                    outcomes.append(e.exit_code)
                    time.sleep(0.05)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in
               ("grpc", "grpc", "rest", "rest")]
    for t in threads:
        t.start()
    wait_for(lambda: outcomes.count("ok") >= 4)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(60) == 0
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert set(outcomes) <= {"ok", 3}, outcomes  # 3: unavailable / unreachable
