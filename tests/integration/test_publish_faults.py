"""Publishing when things go wrong mid-upload: no manifest, so no half-published version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from contract.manifest import MANIFEST_FILE, parse_manifest
from tests.conftest import REPO, run_cli
from tools.seaweed import SeaweedFS
from trainer.sample_data import write_sample_data

pytestmark = [pytest.mark.s3, pytest.mark.slow]


@pytest.fixture
def own_store(tmp_path):
    """A store this test may stop and restart without disturbing the others."""
    store = SeaweedFS(tmp_path / "store", access_key="fault-" + uuid.uuid4().hex[:8],
                      secret_key=uuid.uuid4().hex)
    store.start()
    store.create_bucket("models")
    yield store
    store.stop()


def start_training(tmp_path, store, version: int) -> tuple[subprocess.Popen, object]:
    data = tmp_path / "data"
    if not data.exists():
        write_sample_data(str(data), num_classes=2, per_class=3, seed=2, quiet=True)
    log = (tmp_path / f"train-{version}.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "train", "--data", str(data),
         "--output", "s3://models/faults", "--model-name", "m", "--weights", "none",
         "--cache", str(tmp_path / "cache"), "--version", str(version), "--epochs", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=store.client_env(os.environ))
    return proc, log


def wait_for_upload(proc, log, timeout=300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log.seek(0)
        if "uploading version" in log.read():
            return
        assert proc.poll() is None, "trainer ended before uploading"
        time.sleep(0.05)
    raise AssertionError("the upload never started")


def stored(store, prefix: str) -> list[str]:
    client = store._client()
    resp = client.list_objects_v2(Bucket="models", Prefix=prefix)
    return [o["Key"] for o in resp.get("Contents", [])]


def test_store_down_mid_publish_exits_3_and_leaves_no_manifest(tmp_path, own_store):
    proc, log = start_training(tmp_path, own_store, version=5)
    wait_for_upload(proc, log)
    own_store.stop()
    assert proc.wait(180) == 3
    log.seek(0)
    output = log.read()
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "object store" in errors[0], output[-3000:]

    own_store.start()
    assert f"faults/m/5/{MANIFEST_FILE}" not in stored(own_store, "faults/m/5/")

    # Once the store is back, the same command publishes that version cleanly.
    proc = run_cli("trainer", "train", "--data", str(tmp_path / "data"),
                   "--output", "s3://models/faults", "--model-name", "m", "--weights", "none",
                   "--cache", str(tmp_path / "cache"), "--version", "5", "--epochs", "1",
                   "--quiet", env=own_store.env(), check=True)
    keys = stored(own_store, "faults/m/5/")
    body = own_store._client().get_object(Bucket="models", Key=f"faults/m/5/{MANIFEST_FILE}")
    manifest = parse_manifest(body["Body"].read(), expected_version=5)
    assert sorted(keys) == sorted([f"faults/m/5/{f.path}" for f in manifest.files] +
                                  [f"faults/m/5/{MANIFEST_FILE}"])
    assert "published s3://models/faults/m/5" in proc.stdout


def test_sigterm_mid_publish_removes_the_partial_upload(tmp_path, own_store):
    proc, log = start_training(tmp_path, own_store, version=9)
    wait_for_upload(proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 128 + signal.SIGTERM
    assert stored(own_store, "faults/m/9/") == []  # cleaned up, and certainly no manifest
