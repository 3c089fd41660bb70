"""Load: 8 clients, gRPC and REST, good and bad requests, batching on, on the tiny base.

Every good request must succeed with the right answer, every bad one must get its 4xx /
INVALID_ARGUMENT / NOT_FOUND, and the server's memory must stay flat. `make test` runs it for
20 seconds; the soak (`make soak`, also in CI) runs the same checks for two minutes.
LOAD_TEST_SECONDS overrides either window.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.integration.conftest import CONFIG_DIR
from tools.model_server import LocalServer

pytestmark = pytest.mark.slow
SHORT_S, SOAK_S = 20, 120
WARMUP_S = 10  # at most a quarter of the window: memory is compared after it


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    [line] = [x for x in status.splitlines() if x.startswith("VmRSS:")]
    return int(line.split()[1]) / 1024


def test_mixed_load_with_batching(tiny_model, tmp_path):
    mixed_load(tiny_model, tmp_path, SHORT_S)


@pytest.mark.soak
def test_soak_mixed_load_for_two_minutes(tiny_model, tmp_path):
    mixed_load(tiny_model, tmp_path, SOAK_S)


def mixed_load(tiny_model, tmp_path, seconds: float) -> None:
    seconds = float(os.environ.get("LOAD_TEST_SECONDS", seconds))
    server = LocalServer(["--model-name", "tiny", "--model-base-path",
                          str(tiny_model.base_path), "--enable-batching",
                          "--batching-parameters-file", str(CONFIG_DIR / "batching.config"),
                          "--monitoring-config-file", str(CONFIG_DIR / "monitoring.config")],
                         tmp_path / "server.log").start(wait_for_model="tiny")
    files = tiny_model.files
    expected = {path: tiny_model.classes[int(np.argmax(p))]
                for path, p in tiny_model.expected.items()}
    counts, failures = Counter(), []
    lock = threading.Lock()
    stop = threading.Event()
    rss = {}

    def grpc_request(stub, images, name="tiny", proto=None):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.inputs["image_bytes"].CopyFrom(
            proto if proto is not None else tf.make_tensor_proto(images, dtype=tf.string))
        return stub.Predict(request, timeout=120)

    def record(kind: str, ok: bool, detail: str = "") -> None:
        with lock:
            counts[kind] += 1
            if not ok:
                failures.append(f"{kind}: {detail[:200]}")

    def client(index: int) -> None:
        channel = grpc.insecure_channel(server.grpc_target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        session = requests.Session()
        url = f"{server.rest_url}/v1/models"
        i = index
        while not stop.is_set():
            i += 1
            path, image = files[i % len(files)]
            b64 = base64.b64encode(image).decode()
            case = i % 10
            try:
                if case in (0, 1, 2):  # good, gRPC
                    response = grpc_request(stub, [image])
                    label = tf.make_ndarray(response.outputs["label"])[0].decode()
                    record("good grpc", label == expected[path], label)
                elif case in (3, 4, 5):  # good, REST
                    r = session.post(f"{url}/tiny:predict", timeout=120,
                                     json={"instances": [{"b64": b64}]})
                    ok = r.status_code == 200 and \
                        r.json()["predictions"][0]["label"] == expected[path]
                    record("good rest", ok, r.text)
                elif case == 6:  # bad image: answered per item (200, `error` set)
                    r = session.post(f"{url}/tiny:predict", timeout=120, json={
                        "instances": [{"b64": base64.b64encode(b"junk" * 10).decode()}]})
                    record("bad rest: not an image", r.status_code == 200 and
                           r.json()["predictions"][0]["error"] ==
                           "not a JPEG/PNG/GIF/BMP image", r.text)
                elif case == 7:  # bad: malformed JSON (REST 400)
                    r = session.post(f"{url}/tiny:predict", data="{oops", timeout=120)
                    record("bad rest: malformed json", r.status_code == 400, r.text)
                elif case == 8:  # bad: unknown model (gRPC NOT_FOUND)
                    try:
                        grpc_request(stub, [image], name="nope")
                        record("bad grpc: unknown model", False, "no error")
                    except grpc.RpcError as e:
                        record("bad grpc: unknown model",
                               e.code() == grpc.StatusCode.NOT_FOUND, e.details())
                else:  # bad: wrong dtype, over REST (400 before batching). Over gRPC,
                    # TF Serving batches such a tensor and the merge fails its whole batch:
                    # test_batch_isolation.py shows that blast radius on its own.
                    r = session.post(f"{url}/tiny:predict", timeout=120,
                                     json={"instances": [1.5, 2.5]})
                    record("bad rest: wrong dtype", r.status_code == 400 and
                           "is not of expected type: string" in r.text, r.text)
            except Exception as e:  # a failure of any kind is recorded, not raised
                record(f"case {case} raised", False, repr(e))
        channel.close()
        session.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(min(WARMUP_S, seconds / 4))
    rss["after warmup"] = rss_mb(server.process.pid)
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    rss["end"] = rss_mb(server.process.pid)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert server.stop() == 0

    summary = {"seconds": round(elapsed, 1), "requests": sum(counts.values()),
               "by_kind": dict(counts), "failures": len(failures),
               "rss_mb": {k: round(v) for k, v in rss.items()}}
    print("\nload summary:", json.dumps(summary, indent=1))
    (tmp_path / "load-summary.json").write_text(json.dumps(summary, indent=1))
    assert failures == []
    assert counts["good grpc"] > 0 and counts["good rest"] > 0
    assert rss["end"] <= rss["after warmup"] * 1.15 + 50, rss  # flat: no per-request growth
