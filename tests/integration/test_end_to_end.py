"""The whole system on loopback, on the full VGG16: sample data in S3 -> train -> publish ->
pull -> serve -> classify, then a newer version rolled out under load.

This is the one end-to-end run of the real network (random weights: no download here): the
0.5 GB export, its upload, the puller's verified download and the server's load all happen
at full size. The first version is trained through the CLI (S3 data, S3 models, S3 feature
cache). The second, on the tiny base (a user changing the base keeps the model's name), is
trained while no client is asking, with the puller stopped; the clients start, then the
puller is started again and brings it: the swap happens while they ask, and every answer is
wholly one version's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from contract.storage import open_location
from serving.client import GrpcClient, RestClient
from tests.conftest import CACHE_BUCKET, DATA_BUCKET, MODELS_BUCKET, REPO, run_cli, unique
from tools.model_server import LocalServer

pytestmark = [pytest.mark.s3, pytest.mark.slow, pytest.mark.vgg16]


def train(published: dict, version: int, *base: str) -> dict:
    """Publish `version` (VGG16 unless `base` says otherwise); returns its report, the full
    one from --report-dir (the version's own names no image: no per-image predictions)."""
    # float32: served scores are compared with the report's to 1e-5, which holds when the
    # feature pass has the exported graph's arithmetic.
    report = Path(tempfile.mkdtemp(prefix="e2e-report-"))
    run_cli("trainer", "train", "--data", published["data"], "--output", published["models"],
            "--model-name", "demo", *(base or ("--weights", "none")), "--cache",
            published["cache"], "--precision", "float32", "--version", str(version),
            "--report-dir", str(report), "--quiet", check=True)
    shipped = json.loads(open_location(published["models"]).read_bytes(
        f"demo/{version}/assets.extra/report/metrics.json"))
    assert "predictions" not in shipped["validation"]
    return json.loads((report / "metrics.json").read_text())


@pytest.fixture(scope="module")
def vgg16_s3(seaweed) -> dict:
    """Version 1 of `demo` on the full VGG16, trained from S3 data into S3."""
    data = f"s3://{DATA_BUCKET}/{unique('e2e')}"
    run_cli("trainer", "sample-data", "--output", data, "--classes", "2", "--per-class", "8",
            "--seed", "3", "--quiet", check=True)
    published = {"data": data, "models": f"s3://{MODELS_BUCKET}/{unique('e2e')}",
                 "cache": f"s3://{CACHE_BUCKET}/{unique('e2e')}"}
    return {**published, "report": train(published, 1)}


def wait_for(condition, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.25)


def test_train_publish_pull_serve_classify_and_roll_out(vgg16_s3, tiny_args, tmp_path):
    models = vgg16_s3["models"]  # holds version 1 of "demo"
    report = vgg16_s3["report"]
    assert report["base_model"]["name"] == "vgg16" and \
        report["base_model"]["feature_dim"] == 4096
    val = report["validation"]["predictions"]

    dest = tmp_path / "models" / "demo"
    puller_log = (tmp_path / "puller.log").open("w+")

    def start_puller() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "serving", "pull", "--source", f"{models}/demo",
             "--dest", str(dest), "--watch", "--interval", "1"], stdout=puller_log,
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
        second = train(vgg16_s3, 2, *tiny_args)["validation"]["predictions"]
        assert second[0]["path"] == val[0]["path"]  # same data, same seed: same split
        stop, failures, answered = threading.Event(), [], []

        def client_loop(index: int):
            with GrpcClient(server.grpc_target, timeout=120) as client:
                while not stop.is_set():
                    try:
                        answered.append((index, client.classify(images[:1], "demo")[0].scores))
                    except Exception as e:  # collected; the test fails below
                        failures.append(repr(e))
                    time.sleep(0.25)  # asking all along, without taking every core

        threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) >= 2)  # the clients are asking
        puller = start_puller()
        with GrpcClient(server.grpc_target) as client:
            wait_for(lambda: [(v.version, v.state) for v in client.status("demo")] ==
                     [(2, "AVAILABLE"), (1, "END")])
        settled = len(answered)  # each client answers twice more: its last one is from 2
        wait_for(lambda: all(sum(i == index for i, _ in answered[settled:]) >= 2
                             for index in range(2)))
        stop.set()
        for t in threads:
            t.join()
        assert failures == []

        def version_of(scores) -> int:
            for version, expected in ((1, val[0]["scores"]), (2, second[0]["scores"])):
                if np.allclose(scores, expected, atol=1e-5):
                    return version
            raise AssertionError(f"{scores} is neither version's answer")

        # Each client: version 1 until the swap, version 2 after it, never back.
        for index in range(2):
            versions = [version_of(s) for i, s in answered if i == index]
            assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions), \
                versions
        assert sorted(p.name for p in dest.iterdir()) == ["1", "2"]
    finally:
        stop_code = server.stop()
        puller.send_signal(signal.SIGTERM)
        puller_code = puller.wait(60)
    assert stop_code == 0 and puller_code == 0
