"""One client's bad image never fails another client's request, under TF Serving's batching
semantics: a batched run that fails fails every request merged into it
(tensorflow_serving/batching/batching_session.cc, BatchingSession::ProcessBatch, which gives
every task of the batch the one status of the run). `serving local` batches the same way, so
the exported graph has to report bad images per item instead of failing the run.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.integration.conftest import http
from tools.model_server import LocalServer

TIMEOUT = 120
# Requests arriving within 400 ms ride in one batch, so "at the same instant" is reliable.
GATHERING = "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 400000 }\n" \
            "max_enqueued_batches { value: 8 }\nnum_batch_threads { value: 1 }\n"


def batching_server(tmp_path, base_path, name) -> LocalServer:
    config = tmp_path / "batching.config"
    config.write_text(GATHERING)
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true path: \"/metrics\" }\n")
    return LocalServer(["--model-name", name, "--model-base-path", str(base_path),
                        "--enable-batching", "--batching-parameters-file", str(config),
                        "--monitoring-config-file", str(monitoring)],
                       tmp_path / "server.log").start(wait_for_model=name)


def at_once(calls: list) -> list:
    """Run every call at the same instant (a barrier), return results or exceptions."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        try:
            return call()
        except Exception as e:  # the test inspects it
            return e

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def batch_histogram(server: LocalServer) -> dict[str, float]:
    """processed_batch_size: {bucket limit: cumulative count, "sum": items, "count": batches}."""
    _, _, page = http("GET", f"{server.rest_url}/metrics")
    found = {}
    name = ":tensorflow:serving:batching_session:processed_batch_size_"
    for line in page.splitlines():
        if line.startswith(name):
            key = line.split('le="')[1].split('"')[0] if "_bucket" in line else \
                line[len(name):].split("{")[0].split()[0]
            found[key] = float(line.rsplit(" ", 1)[1])
    return found


def largest_batch(server: LocalServer) -> float:
    """The smallest bucket limit that holds every batch run so far."""
    found = batch_histogram(server)
    return min((float(k) for k, v in found.items() if k not in ("sum", "count", "+Inf")
                and v == found.get("count")), default=0)


@pytest.fixture(scope="module")
def gathering_server(tiny_model, tmp_path_factory):
    srv = batching_server(tmp_path_factory.mktemp("gathering"), tiny_model.base_path, "tiny")
    yield srv
    assert srv.stop() == 0


def test_one_bad_image_and_five_good_requests_at_once_over_rest(gathering_server, tiny_model):
    goods = tiny_model.files[:5]
    url = f"{gathering_server.rest_url}/v1/models/tiny:predict"

    def post(data: bytes):
        return lambda: requests.post(url, timeout=TIMEOUT, json={
            "instances": [{"b64": base64.b64encode(data).decode()}]})

    responses = at_once([post(b"this is not an image")] + [post(d) for _, d in goods])
    assert [r.status_code for r in responses] == [200] * 6, [r.text[:200] for r in responses]
    [bad] = responses[0].json()["predictions"]
    assert bad["error"] == "not a JPEG/PNG/GIF/BMP image" and bad["label"] == ""
    for (path, _), response in zip(goods, responses[1:], strict=True):
        [p] = response.json()["predictions"]
        assert p["error"] == ""
        assert p["label"] == tiny_model.classes[int(np.argmax(tiny_model.expected[path]))]
        np.testing.assert_allclose(p["scores"], tiny_model.expected[path], atol=1e-5)
    assert largest_batch(gathering_server) >= 4  # they really ran as one batch


def test_one_bad_image_and_five_good_requests_at_once_over_grpc(gathering_server, tiny_model):
    goods = tiny_model.files[5:10]
    with grpc.insecure_channel(gathering_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def predict(data: bytes):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tiny"
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([data]))
            return lambda: stub.Predict(request, timeout=TIMEOUT)

        bad_bytes = goods[0][1][:40]  # a JPEG cut short: its header is fine, its data is not
        responses = at_once([predict(bad_bytes)] + [predict(d) for _, d in goods])
    assert not [r for r in responses if isinstance(r, Exception)], responses
    outputs = [{k: tf.make_ndarray(v) for k, v in r.outputs.items()} for r in responses]
    assert outputs[0]["error"][0] == b"truncated or corrupt image"
    for (path, _), out in zip(goods, outputs[1:], strict=True):
        assert out["error"][0] == b""
        np.testing.assert_allclose(out["scores"][0], tiny_model.expected[path], atol=1e-5)

    # The same mixed batch straight into the SavedModel's signature, in process, gives the
    # same outputs as the server's merged batch did.
    loaded = tf.saved_model.load(str(tiny_model.version_dir))
    direct = loaded.signatures["serving_default"](
        image_bytes=tf.constant([bad_bytes] + [d for _, d in goods]))
    for i, out in enumerate(outputs):
        assert out["error"][0] == direct["error"].numpy()[i]
        assert out["label"][0] == direct["label"].numpy()[i]
        np.testing.assert_allclose(out["scores"][0], direct["scores"].numpy()[i], atol=1e-6)


def test_malformed_examples_and_good_classify_requests_at_once(gathering_server, tiny_model):
    """Issue 27: an Example without `image/encoded`, with two values in it or with another
    type failed the parse of the whole batched run, so every Classify request batched with
    it got that client's INVALID_ARGUMENT. Now each such item gets all-zero scores."""
    from tensorflow_serving.apis import classification_pb2

    goods = tiny_model.files[:3]

    def example(**feature) -> tf.train.Example:
        return tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": tf.train.Feature(**feature)} if feature else {}))

    first = goods[0][1]
    hostile = [example(), example(bytes_list=tf.train.BytesList(value=[first, first])),
               example(int64_list=tf.train.Int64List(value=[1]))]
    with grpc.insecure_channel(gathering_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def classify(e: tf.train.Example):
            request = classification_pb2.ClassificationRequest()
            request.model_spec.name = "tiny"
            request.model_spec.signature_name = "classify"
            request.input.example_list.examples.add().CopyFrom(e)
            return lambda: stub.Classify(request, timeout=TIMEOUT)

        responses = at_once([classify(e) for e in hostile] + [classify(example(
            bytes_list=tf.train.BytesList(value=[d]))) for _, d in goods])
    assert not [r for r in responses if isinstance(r, Exception)], responses
    assert len(responses) == 6
    for r in responses[:3]:
        assert [c.score for c in r.result.classifications[0].classes] == [0.0, 0.0]
    for (path, _), r in zip(goods, responses[3:], strict=True):
        scores = [c.score for c in r.result.classifications[0].classes]
        np.testing.assert_allclose(scores, tiny_model.expected[path], atol=1e-5)
    assert largest_batch(gathering_server) >= 4


@pytest.mark.parametrize("tensor,code,message", [
    (tf.make_tensor_proto([1.0], dtype=tf.float32), grpc.StatusCode.INTERNAL,
     "Tensor concat operation failed: INVALID_ARGUMENT: Cannot concatenate tensors that have "
     "different data types. Got "),  # string and float, in the order the tasks joined
    (tf.make_tensor_proto([[b"x"]]), grpc.StatusCode.FAILED_PRECONDITION,
     "Tensors with name 'image_bytes' from different tasks have different shapes"),
], ids=["float-image-bytes", "image-bytes-of-rank-2"])
def test_a_tensor_of_another_dtype_or_shape_fails_its_whole_batch_as_in_tf_serving(
        gathering_server, tiny_model, tensor, code, message):
    """What the exported graph cannot help: TF Serving converts a Predict request's tensors
    without checking them against the signature, so one client's tensor of another dtype or
    rank fails the merge of the batch it joined (batching_session.cc, MergeInputTensors),
    and every request in it gets that status. serving local shows the same blast radius."""
    goods = tiny_model.files[3:6]
    with grpc.insecure_channel(gathering_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def predict(proto):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tiny"
            request.inputs["image_bytes"].CopyFrom(proto)
            return lambda: stub.Predict(request, timeout=TIMEOUT)

        responses = at_once([predict(tf.make_tensor_proto([d])) for _, d in goods]
                            + [predict(tensor)])
        assert len(responses) == 4 and all(isinstance(r, grpc.RpcError) for r in responses)
        assert {r.code() for r in responses} == {code}, [r.details() for r in responses]
        assert all(message in r.details() for r in responses), responses[0].details()
        # Alone, the same tensor fails only itself; the good ones then answer.
        alone = at_once([predict(tensor)])[0]
        assert isinstance(alone, grpc.RpcError)
        assert alone.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not isinstance(at_once([predict(tf.make_tensor_proto([goods[0][1]]))])[0],
                              Exception)


@pytest.fixture(scope="module")
def fragile_model(tmp_path_factory):
    """A SavedModel whose run fails on any negative input: what the VGG16 graph did on an
    undecodable image before it reported bad images per item."""
    base = tmp_path_factory.mktemp("fragile") / "fragile"

    class Fragile(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            check = tf.debugging.assert_non_negative(x, message="negative input")
            with tf.control_dependencies([check]):
                return {"y": tf.identity(x) * 2}

    module = Fragile()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    return base


def test_a_failed_batched_run_fails_every_request_in_it_as_tf_serving_does(fragile_model,
                                                                           tmp_path):
    srv = batching_server(tmp_path, fragile_model, "fragile")
    url = f"{srv.rest_url}/v1/models/fragile:predict"
    try:
        def post(value: float):
            return lambda: requests.post(url, json={"instances": [value]}, timeout=TIMEOUT)

        responses = at_once([post(-1.0), post(1.0), post(2.0), post(3.0)])
        assert [r.status_code for r in responses] == [400] * 4, [r.text for r in responses]
        assert all("negative input" in r.json()["error"] for r in responses)
        # Alone, the same good requests succeed: it was the batch that failed them.
        assert requests.post(url, json={"instances": [1.0]}, timeout=TIMEOUT).json() == \
            {"predictions": [2.0]}
    finally:
        assert srv.stop() == 0


def test_a_request_larger_than_a_batch_is_split_and_answered_whole(fragile_model, tmp_path):
    """enable_large_batch_splitting with max_execution_batch_size 4: a 10-item request runs
    as batches of 4, 4 and 2 and is answered in order; a part that fails fails the request;
    above max_batch_size it is refused, as TF Serving refuses it."""
    config = tmp_path / "batching.config"
    config.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 1000 }\n"
                      "enable_large_batch_splitting { value: true }\n"
                      "max_execution_batch_size { value: 4 }\nnum_batch_threads { value: 1 }\n")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true path: \"/metrics\" }\n")
    srv = LocalServer(["--model-name", "fragile", "--model-base-path", str(fragile_model),
                       "--enable-batching", "--batching-parameters-file", str(config),
                       "--monitoring-config-file", str(monitoring)],
                      tmp_path / "server.log").start(wait_for_model="fragile")
    url = f"{srv.rest_url}/v1/models/fragile:predict"
    try:
        values = [float(v) for v in range(10)]
        answer = requests.post(url, json={"instances": values}, timeout=TIMEOUT)
        assert answer.json() == {"predictions": [2 * v for v in values]}
        ran = batch_histogram(srv)
        assert (ran["count"], ran["sum"]) == (3, 10)  # batches of 4, 4 and 2
        failed = requests.post(url, json={"instances": values[:6] + [-1.0] + values[7:]},
                               timeout=TIMEOUT)
        assert failed.status_code == 400 and "negative input" in failed.json()["error"]
        refused = requests.post(url, json={"instances": [1.0] * 17}, timeout=TIMEOUT)
        assert refused.status_code == 400
        assert refused.json()["error"] == "Task size 17 is larger than maximum input batch " \
                                          "size 16"
    finally:
        assert srv.stop() == 0
