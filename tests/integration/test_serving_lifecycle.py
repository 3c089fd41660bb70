"""`serving local` over time: new versions under load, broken versions, batching, shutdown."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import REPO, link_version
from tests.integration.conftest import CONFIG_DIR, http, http_json
from tools.model_server import LocalServer

pytestmark = pytest.mark.slow
TIMEOUT = 120


def grpc_predict(stub, images: list[bytes], name="tiny"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return stub.Predict(request, timeout=TIMEOUT)


def status_of(server, model="tiny") -> dict[str, dict]:
    _, body = http_json("GET", f"{server.rest_url}/v1/models/{model}")
    return {v["version"]: v for v in body["model_version_status"]}


def wait_until(condition, timeout=120, every=0.25):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(every)


@pytest.fixture(scope="module")
def polling_server(tiny_model, tmp_path_factory):
    """Serves only version 1 at first and polls its folder twice a second."""
    tmp = tmp_path_factory.mktemp("polling")
    base = tmp / "tiny"
    base.mkdir()
    link_version(tiny_model.version_dir, base, 1)
    # A failed load is retried as TF Serving does, here quickly: 2 retries 0.5 s apart.
    srv = LocalServer(["--model-name", "tiny", "--model-base-path", str(base),
                       "--file-system-poll-wait-seconds", "0.5",
                       "--max_num_load_retries=2", "--load_retry_interval_micros=500000"],
                      tmp / "server.log")
    srv.start(wait_for_model="tiny")
    srv.base = base
    yield srv
    assert srv.stop() == 0, srv.log_text()[-3000:]
    shutil.rmtree(tmp, ignore_errors=True)  # holds a full VGG16 version by now


def test_new_version_is_swapped_in_with_no_failed_request(polling_server, tiny_model):
    path, image = tiny_model.files[0]
    payload = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]})
    stop, failures, versions, rest_ok = threading.Event(), [], [], []

    def grpc_client():
        with grpc.insecure_channel(polling_server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    started = time.monotonic()
                    response = grpc_predict(stub, [image])
                    versions.append((started, response.model_spec.version.value))
                    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"])[0],
                                               tiny_model.expected[path], atol=1e-5)
                except Exception as e:  # collected; the test fails below
                    failures.append(repr(e))

    def rest_client():
        while not stop.is_set():
            status, _, text = http("POST", f"{polling_server.rest_url}/v1/models/tiny:predict",
                                   payload)
            (rest_ok if status == 200 else failures).append(text)

    threads = [threading.Thread(target=grpc_client), threading.Thread(target=rest_client)]
    for t in threads:
        t.start()
    wait_until(lambda: len(versions) >= 2)
    link_version(tiny_model.version_dir, polling_server.base, 2)
    wait_until(lambda: status_of(polling_server).get("1", {}).get("state") == "END")
    unloaded_at = time.monotonic()
    wait_until(lambda: sum(t > unloaded_at for t, _ in versions) >= 3)
    stop.set()
    for t in threads:
        t.join()

    assert failures == []
    assert versions[0][1] == 1 and versions[-1][1] == 2
    # Requests sent after version 1 was unloaded are all answered by version 2.
    assert {v for t, v in versions if t > unloaded_at} == {2}
    assert len(rest_ok) >= 2
    status = status_of(polling_server)
    assert status["2"]["state"] == "AVAILABLE" and status["1"]["state"] == "END"
    assert status["1"]["status"]["error_code"] == "OK"  # unloaded, not failed


def test_a_broken_version_is_reported_and_the_previous_one_keeps_serving(polling_server,
                                                                         tiny_model):
    broken = polling_server.base / ".incoming-3"
    (broken / "variables").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    broken.rename(polling_server.base / "3")
    wait_until(lambda: status_of(polling_server).get("3", {}).get("state") == "END")
    status = status_of(polling_server)["3"]["status"]
    assert status["error_code"] != "OK" and "SavedModel" in status["error_message"]
    with grpc.insecure_channel(polling_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert grpc_predict(stub, [tiny_model.files[0][1]]).model_spec.version.value == 2
    log = polling_server.log_text()
    assert "retry 1 of 2" in log and "retry 2 of 2" in log  # retried before it was END
    # Non-numeric folders (a puller's staging folder, say) are never versions.
    (polling_server.base / ".incoming-4").mkdir()
    time.sleep(1.5)
    assert "4" not in status_of(polling_server)


def test_a_version_that_becomes_loadable_during_its_retries_is_served(polling_server,
                                                                      tiny_model):
    """TF Serving retries a failed load (--max_num_load_retries, 5 by default, a minute
    apart): a version whose files were not all there at first is loaded on a retry."""
    import shutil

    partial = polling_server.base / ".incoming-5"
    shutil.copytree(tiny_model.version_dir, partial, copy_function=os.link)
    shutil.rmtree(partial / "variables")  # the graph without its weights: cannot load
    partial.rename(polling_server.base / "5")
    wait_until(lambda: "loading servable version {name: tiny version: 5} failed"
               in polling_server.log_text(), timeout=60, every=0.1)
    assert status_of(polling_server)["5"]["state"] == "LOADING"  # retrying, not END
    shutil.copytree(tiny_model.version_dir / "variables",
                    polling_server.base / "5" / "variables", copy_function=os.link)
    wait_until(lambda: status_of(polling_server)["5"]["state"] == "AVAILABLE")


def metric(page: str, name: str) -> float:
    total = 0.0
    for line in page.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_batching_merges_concurrent_requests(tiny_model, tmp_path):
    srv = LocalServer(["--model-name", "tiny", "--model-base-path", str(tiny_model.base_path),
                       "--enable-batching",
                       "--batching-parameters-file", str(CONFIG_DIR / "batching.config"),
                       "--monitoring-config-file", str(CONFIG_DIR / "monitoring.config")],
                      tmp_path / "server.log").start(wait_for_model="tiny")
    try:
        files = tiny_model.files[:8]
        with grpc.insecure_channel(srv.grpc_target) as channel, ThreadPoolExecutor(8) as pool:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            responses = list(pool.map(lambda f: grpc_predict(stub, [f[1]]), files))
            for (path, _), response in zip(files, responses, strict=True):
                np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"])[0],
                                           tiny_model.expected[path], atol=1e-5)
            # A bad image merged with good ones is reported for itself; the others answer.
            bad = [b"not an image", files[0][1], files[1][1]]
            futures = [pool.submit(grpc_predict, stub, [b]) for b in bad]
            errors = [tf.make_ndarray(f.result().outputs["error"])[0] for f in futures]
            assert errors == [b"not a JPEG/PNG/GIF/BMP image", b"", b""]
            # Bigger than max_batch_size (32): refused before it runs.
            with pytest.raises(grpc.RpcError) as error:
                grpc_predict(stub, [files[0][1]] * 33)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Task size 33 is larger than maximum input batch size 32" in \
                error.value.details()
        _, _, page = http("GET", f"{srv.rest_url}/monitoring/prometheus/metrics")
        runs = metric(page, ":tensorflow:serving:batching_session:wrapped_run_count")
        processed = metric(page, ":tensorflow:serving:batching_session:processed_batch_size_sum")
        assert processed >= 8 and runs < processed, page  # some model calls served >1 request
    finally:
        assert srv.stop() == 0


def test_a_full_batching_queue_answers_unavailable_at_once(tiny_model, tmp_path):
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 2 }\nbatch_timeout_micros { value: 0 }\n"
                      "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n")
    srv = LocalServer(["--model-name", "tiny", "--model-base-path", str(tiny_model.base_path),
                       "--enable-batching", "--batching-parameters-file", str(params)],
                      tmp_path / "server.log").start(wait_for_model="tiny")
    try:
        pair = [tiny_model.files[0][1], tiny_model.files[1][1]]
        with grpc.insecure_channel(srv.grpc_target) as channel, ThreadPoolExecutor(6) as pool:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            finished = {}
            futures = [pool.submit(grpc_predict, stub, pair) for _ in range(6)]
            for i, f in enumerate(futures):
                f.add_done_callback(lambda _, i=i: finished.setdefault(i, time.monotonic()))
            outcomes = []
            for f in futures:
                try:
                    f.result()
                    outcomes.append("ok")
                except grpc.RpcError as e:
                    outcomes.append((e.code(), e.details()))
        rejected = [i for i, o in enumerate(outcomes) if o != "ok"]
        accepted = [i for i, o in enumerate(outcomes) if o == "ok"]
        assert len(accepted) >= 2 and rejected, outcomes
        assert {outcomes[i] for i in rejected} == {(
            grpc.StatusCode.UNAVAILABLE,
            "The batch scheduling queue to which this task was submitted is full")}
        # Refused at once: every rejection is back before the first accepted request.
        assert max(finished[i] for i in rejected) < min(finished[i] for i in accepted)
        status, _, text = http("POST", f"{srv.rest_url}/v1/models/tiny:predict", json.dumps(
            {"instances": [{"b64": base64.b64encode(pair[0]).decode()}]}))
        assert status == 200, text  # the server is fine afterwards
    finally:
        assert srv.stop() == 0


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(tiny_model,
                                                                          tmp_path):
    srv = LocalServer(["--model-name", "tiny", "--model-base-path", str(tiny_model.base_path)],
                      tmp_path / "server.log").start(wait_for_model="tiny")
    images = [d for _, d in tiny_model.files]  # 12 images: a few seconds of VGG16
    body = json.dumps({"instances": [{"b64": base64.b64encode(d).decode()} for d in images]})
    with ThreadPoolExecutor(2) as pool:
        rest = pool.submit(http, "POST", f"{srv.rest_url}/v1/models/tiny:predict", body, None,
                           120)
        channel = grpc.insecure_channel(srv.grpc_target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        in_flight = pool.submit(grpc_predict, stub, images)
        time.sleep(1.0)
        srv.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # the REST listener is closed
            http("GET", f"{srv.rest_url}/v1/models/tiny", timeout=5)
        status, _, text = rest.result()
        assert status == 200 and len(json.loads(text)["predictions"]) == len(images)
        assert len(tf.make_ndarray(in_flight.result().outputs["label"])) == len(images)
        channel.close()
    assert srv.process.wait(60) == 0
    assert "shutting down" in srv.log_text()


def test_startup_fails_when_the_only_version_cannot_load(tmp_path):
    base = tmp_path / "m" / "1"
    base.mkdir(parents=True)
    (base / "saved_model.pb").write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "serving", "local", "--model-name", "m",
                           "--model-base-path", str(base.parent), "--port", "0",
                           "--rest-api-port", "0", "--max_num_load_retries", "1",
                           "--load_retry_interval_micros", "100000"], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2  # this project's exit code for a bad model (TF Serving: 1)
    assert re.search(r"error: Failed to start server\. Error: UNKNOWN: 1 servable\(s\) did not "
                     r"become available: \{name: m version: 1\} due to error", proc.stderr)


def test_labels_on_versions_not_loaded_need_tf_servings_flag(tiny_model, tmp_path):
    """server_core.cc (UpdateModelVersionLabelMap) refuses, at startup, a label on a version
    that is not loaded yet unless --allow_version_labels_for_unavailable_models is given."""
    from tests.integration.conftest import project_models_config

    config = project_models_config(tmp_path / "models.config", tiny_model.name,
                                   tiny_model.base_path, [1], {"stable": 1})
    proc = subprocess.run([sys.executable, "-m", "serving", "local", "--model-config-file",
                           str(config), "--port", "0", "--rest-api-port", "0"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert line == ("error: Failed to start server. Error: FAILED_PRECONDITION: Request to "
                    "assign label to version 1 of model tiny, which is not currently "
                    "available for inference")


@pytest.mark.parametrize("args, message", [
    (["--model-name", "m"], "give --model-name and --model-base-path, or --model-config-file"),
    (["--model-name", "m", "--model-base-path", "/x", "--batching-parameters-file",
      str(CONFIG_DIR / "batching.config")], "--batching-parameters-file requires "
     "--enable-batching"),
    (["--model-config-file", "/nonexistent.config"], "cannot read model config file"),
    (["--model-config-file", str(CONFIG_DIR / "batching.config")], "model config file"),
])
def test_bad_configuration_is_exit_2_with_one_line(args, message):
    # Ports 0: any free ones (8500 may be someone else's; a port in use is its own exit 2).
    proc = subprocess.run([sys.executable, "-m", "serving", "local", *args, "--port", "0",
                           "--rest-api-port", "0"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1 and message in errors[0]
