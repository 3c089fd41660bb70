"""The whole system on loopback, on the full VGG16: sample data in S3 -> train -> publish ->
pull -> serve -> classify, then a newer version rolled out under load.

This is the one end-to-end run of the real network (random weights: no download here): the
0.5 GB export, its upload, the puller's verified download and the server's load all happen
at full size. The first version is trained through the CLI (S3 data, S3 models, S3 feature
cache). The second is trained while no client is asking (on 2 cores, clients hammering VGG16
for the whole run only slowed the trainer), with the puller stopped; the clients start, then
the puller is started again and brings it: the swap happens while they ask.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from contract.storage import open_location
from serving.client import GrpcClient, RestClient
from tests.conftest import CACHE_BUCKET, DATA_BUCKET, MODELS_BUCKET, REPO, run_cli, unique
from tools.model_server import LocalServer

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def train(published: dict, version: int) -> None:
    # float32: served scores are compared with the report's to 1e-5, which holds when the
    # feature pass has the exported graph's arithmetic.
    run_cli("trainer", "train", "--data", published["data"], "--output", published["models"],
            "--model-name", "demo", "--weights", "none", "--cache", published["cache"],
            "--precision", "float32", "--version", str(version), "--quiet", check=True)


@pytest.fixture(scope="module")
def vgg16_s3(seaweed) -> dict:
    """Version 1 of `demo` on the full VGG16, trained from S3 data into S3."""
    data = f"s3://{DATA_BUCKET}/{unique('e2e')}"
    run_cli("trainer", "sample-data", "--output", data, "--classes", "2", "--per-class", "8",
            "--seed", "3", "--quiet", check=True)
    published = {"data": data, "models": f"s3://{MODELS_BUCKET}/{unique('e2e')}",
                 "cache": f"s3://{CACHE_BUCKET}/{unique('e2e')}"}
    train(published, 1)
    return {**published, "version_uri": f"{published['models']}/demo/1"}


def wait_for(condition, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.25)


def test_train_publish_pull_serve_classify_and_roll_out(vgg16_s3, tmp_path):
    models = vgg16_s3["models"]  # holds version 1 of "demo"
    report = json.loads(open_location(vgg16_s3["version_uri"]).read_bytes(
        "assets.extra/report/metrics.json"))
    assert report["base_model"]["name"] == "vgg16" and \
        report["base_model"]["feature_dim"] == 4096
    val = report["validation"]["predictions"]

    dest = tmp_path / "models" / "demo"
    puller_log = (tmp_path / "puller.log").open("w+")

    def start_puller() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "serving", "pull", "--source", f"{models}/demo",
             "--dest", str(dest), "--watch", "--interval", "1", "-q"], stdout=puller_log,
            stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())

    puller = start_puller()
    server = LocalServer(["--model-name", "demo", "--model-base-path", str(dest),
                          "--file-system-poll-wait-seconds", "0.5"], tmp_path / "server.log")
    try:
        wait_for(lambda: (dest / "1").is_dir())
        server.start(wait_for_model="demo")

        data = open_location(vgg16_s3["data"])
        images = [data.read_bytes(p["path"]) for p in val]
        for client in (GrpcClient(server.grpc_target), RestClient(server.rest_url)):
            with client:
                predictions = client.classify(images, "demo")
            assert [p.label for p in predictions] == [p["label"] for p in val]
            np.testing.assert_allclose([p.scores for p in predictions],
                                       [p["scores"] for p in val], atol=1e-5)

        # A newer version, arriving while clients keep asking, is picked up with no error.
        puller.send_signal(signal.SIGTERM)
        assert puller.wait(60) == 0
        train(vgg16_s3, 2)
        stop, failures, answered = threading.Event(), [], []

        def client_loop():
            with GrpcClient(server.grpc_target, timeout=120) as client:
                while not stop.is_set():
                    try:
                        answered.append(client.classify(images[:1], "demo")[0].label)
                    except Exception as e:  # collected; the test fails below
                        failures.append(repr(e))

        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) >= 2)  # the clients are asking
        puller = start_puller()
        with GrpcClient(server.grpc_target) as client:
            wait_for(lambda: [(v.version, v.state) for v in client.status("demo")] ==
                     [(2, "AVAILABLE"), (1, "END")])
        settled = len(answered)
        wait_for(lambda: len(answered) >= settled + 2)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert set(answered) == {val[0]["label"]}  # same data, same seed: same answer
        assert sorted(p.name for p in dest.iterdir()) == ["1", "2"]
    finally:
        stop_code = server.stop()
        puller.send_signal(signal.SIGTERM)
        puller_code = puller.wait(60)
    assert stop_code == 0 and puller_code == 0
