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
from tests.integration.holding_proxy import HoldingProxy
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


def start_training(tmp_path, store, version: int, base_args: list[str]
                   ) -> tuple[subprocess.Popen, HoldingProxy]:
    """The trainer, talking to `store` through a proxy that freezes the upload once a file
    of `version` is on its way (holding_proxy.py)."""
    data = tmp_path / "data"
    if not data.exists():
        write_sample_data(str(data), num_classes=2, per_class=3, seed=2, quiet=True)
    proxy = HoldingProxy(store.ports["s3.port"], f"PUT /models/faults/m/{version}/".encode())
    log = (tmp_path / f"train-{version}.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "train", "--data", str(data),
         "--output", "s3://models/faults", "--model-name", "m", *base_args,
         "--cache", str(tmp_path / "cache"), "--version", str(version), "--epochs", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        env={**store.client_env(os.environ), "AWS_ENDPOINT_URL": proxy.endpoint})
    proc.log = log
    return proc, proxy


def wait_for_upload(proc, proxy: HoldingProxy, timeout=300) -> None:
    """Until a file of the version is being uploaded, and frozen there by the proxy."""
    deadline = time.monotonic() + timeout
    while not proxy.held.wait(0.05):
        assert proc.poll() is None, "trainer ended before uploading: " + read(proc.log)
        assert time.monotonic() < deadline, "the upload never started"
    log = read(proc.log)
    assert "uploading version" in log and "published s3://" not in log


def read(log) -> str:
    log.seek(0)
    return log.read()


def stored(store, prefix: str) -> list[str]:
    client = store._client()
    resp = client.list_objects_v2(Bucket="models", Prefix=prefix)
    return [o["Key"] for o in resp.get("Contents", [])]


def test_store_down_mid_publish_exits_3_and_leaves_no_manifest(tmp_path, own_store,
                                                               tiny_args):
    proc, proxy = start_training(tmp_path, own_store, 5, tiny_args)
    wait_for_upload(proc, proxy)
    own_store.stop()
    proxy.release()  # the frozen requests go on, to a store that is gone
    assert proc.wait(180) == 3
    proxy.close()
    output = read(proc.log)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "object store" in errors[0], output[-3000:]

    own_store.start()
    assert f"faults/m/5/{MANIFEST_FILE}" not in stored(own_store, "faults/m/5/")

    # Once the store is back, the same command publishes that version cleanly.
    proc = run_cli("trainer", "train", "--data", str(tmp_path / "data"),
                   "--output", "s3://models/faults", "--model-name", "m", *tiny_args,
                   "--cache", str(tmp_path / "cache"), "--version", "5", "--epochs", "1",
                   "--quiet", env=own_store.env(), check=True)
    keys = stored(own_store, "faults/m/5/")
    body = own_store._client().get_object(Bucket="models", Key=f"faults/m/5/{MANIFEST_FILE}")
    manifest = parse_manifest(body["Body"].read(), expected_version=5)
    assert sorted(keys) == sorted([f"faults/m/5/{f.path}" for f in manifest.files] +
                                  [f"faults/m/5/{MANIFEST_FILE}"])
    assert "published s3://models/faults/m/5" in proc.stdout


def test_sigterm_mid_publish_removes_the_partial_upload(tmp_path, own_store, tiny_args):
    proc, proxy = start_training(tmp_path, own_store, 9, tiny_args)
    wait_for_upload(proc, proxy)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the signal lands while the upload is frozen...
    proxy.release()  # ...then the uploads in flight finish, and the trainer cleans up
    assert proc.wait(120) == 128 + signal.SIGTERM, read(proc.log)[-3000:]
    proxy.close()
    # cleaned up, and certainly no manifest
    assert stored(own_store, "faults/m/9/") == [], read(proc.log)[-3000:]
