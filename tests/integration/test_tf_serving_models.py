"""`serving local` loads and runs SavedModels the way TF Serving 2.20 does (issue 28): through
TensorFlow's session loader (TF1 and TF2 SavedModels alike), feeding and fetching the
SignatureDef's tensor names with no check of its own before the run; version folders keep
their own names ("00000123"); Regress and MultiInference are served; gRPC also listens on
--grpc_socket_path; a config file that does not parse says TF Serving's line.

The models are written here (tests/integration/savedmodels.py): y = 0.5 x + 3, as a TF1
export with Predict, Classify and Regress signatures, and as a TF2 one; y = 2 x as Keras 3
exports it (`Model.export`)."""

from __future__ import annotations

import json

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.conftest import run_cli
from tests.integration.conftest import http
from tests.integration.savedmodels import (
    example,
    write_keras_model,
    write_tf1_linear_model,
    write_tf2_linear_model,
)
from tools.model_server import LocalServer

TIMEOUT = 60
AGE_MS = 1500  # --grpc_channel_arguments: connections closed after this


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """Both models, in TF Serving's testdata layout (zero-padded version folders), served
    together from one --model_config_file, gRPC also on a Unix socket."""
    root = tmp_path_factory.mktemp("linear")
    write_tf1_linear_model(root / "tf1" / "00000123")
    write_tf2_linear_model(root / "tf2" / "0001")
    write_keras_model(root / "keras" / "0007")
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{root / n}" model_platform: "tensorflow" }}\n'
        for n in ("tf1", "tf2", "keras")) + "}\n")
    socket = root / "grpc.sock"
    server = LocalServer(["--model_config_file", str(config), "--grpc_socket_path",
                          str(socket), "--grpc_channel_arguments=grpc.max_connection_age_ms="
                          f"{AGE_MS},grpc.max_connection_age_grace_ms=500"],
                         root / "server.log")
    server.start(wait_for_model="tf1")
    server.wait_available("tf2")
    server.wait_available("keras")
    yield server, socket
    assert server.stop() == 0


def stub(target: str):
    channel = grpc.insecure_channel(target)
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_zero_padded_version_folders_are_versions_of_their_number(linear):
    """file_system_storage_path_source.cc keeps each version's own path: 00000123 is
    version 123, loaded from there (it was looked for at <base>/123 and never loaded)."""
    server, _ = linear
    status, _, text = http("GET", f"{server.rest_url}/v1/models/tf1")
    assert status == 200, text
    [version] = json.loads(text)["model_version_status"]
    assert (version["version"], version["state"]) == ("123", "AVAILABLE")
    status, _, text = http("GET", f"{server.rest_url}/v1/models/tf2/versions/1")
    assert status == 200 and '"AVAILABLE"' in text


@pytest.mark.parametrize("model,body,expected", [
    # x is [-1, 1] in the TF1 SignatureDef; a [3] tensor is fed all the same, and the graph
    # (a * x + b) takes it: TF Serving answers these (its testPredictREST does).
    ("tf1", {"instances": [1.0, 2.0, 5.0]}, [3.5, 4.0, 5.5]),
    ("tf1", {"inputs": {"x": [[1.0], [2.0]]}}, [[3.5], [4.0]]),
    ("tf2", {"instances": [1.0, 2.0]}, [3.5, 4.0]),
    ("tf2", {"inputs": [4.0]}, [5.0]),
    ("keras", {"instances": [[1.5], [2.0]]}, [[3.0], [4.0]]),  # Keras 3's Model.export
], ids=["tf1-row", "tf1-columnar", "tf2-row", "tf2-columnar", "keras-row"])
def test_rest_predict_feeds_what_the_request_holds(linear, model, body, expected):
    server, _ = linear
    status, _, text = http("POST", f"{server.rest_url}/v1/models/{model}:predict",
                           json.dumps(body))
    assert status == 200, text
    answer = json.loads(text)
    assert answer.get("predictions", answer.get("outputs")) == expected


def test_grpc_predict_over_tcp_and_over_the_unix_socket(linear):
    server, socket = linear
    for target in (server.grpc_target, f"unix:{socket}"):
        channel, predict = stub(target)
        with channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tf1"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], dtype=tf.float32))
            response = predict.Predict(request, timeout=TIMEOUT)
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [4.0]
        assert response.model_spec.version.value == 123


def test_a_tensor_the_graph_cannot_take_is_the_runtimes_error(linear):
    """Nothing is checked before the run but what TF Serving checks: a string for the
    float input is refused by the session, with TensorFlow's own words."""
    server, _ = linear
    channel, predict = stub(server.grpc_target)
    with channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "tf2"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([b"two"]))
        with pytest.raises(grpc.RpcError) as caught:
            predict.Predict(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Type mismatch: actual string vs. expect float" in caught.value.details()


def test_classify_regress_and_multi_inference_on_a_tf1_model(linear):
    """classifier.cc, regressor.cc, multi_inference.cc: serialized Examples through the
    graph's ParseExample (which TF2's object loader could not even load)."""
    server, _ = linear
    channel, service = stub(server.grpc_target)
    with channel:
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name, regress.model_spec.signature_name = "tf1", "regress_x_to_y"
        for x in (1.0, 2.0):
            regress.input.example_list.examples.add().ParseFromString(example(x))
        answer = service.Regress(regress, timeout=TIMEOUT)
        assert [r.value for r in answer.result.regressions] == [3.5, 4.0]
        assert answer.model_spec.signature_name == "regress_x_to_y"

        classify = classification_pb2.ClassificationRequest()
        classify.model_spec.name, classify.model_spec.signature_name = "tf1", "classify_x_to_y"
        classify.input.CopyFrom(regress.input)
        answer = service.Classify(classify, timeout=TIMEOUT)
        assert [[c.score for c in r.classes] for r in answer.result.classifications] == \
            [[3.5], [4.0]]

        multi = inference_pb2.MultiInferenceRequest()
        for method, name in (("tensorflow/serving/classify", "classify_x_to_y"),
                             ("tensorflow/serving/regress", "regress_x_to_y")):
            task = multi.tasks.add(method_name=method)
            task.model_spec.name, task.model_spec.signature_name = "tf1", name
        multi.input.CopyFrom(regress.input)
        answer = service.MultiInference(multi, timeout=TIMEOUT)
        [classified, regressed] = answer.results
        assert [[c.score for c in r.classes]
                for r in classified.classification_result.classifications] == [[3.5], [4.0]]
        assert [r.value for r in regressed.regression_result.regressions] == [3.5, 4.0]
        assert regressed.model_spec.version.value == 123

        # TF Serving's refusals, word for word.
        twice = inference_pb2.MultiInferenceRequest()
        twice.tasks.add().CopyFrom(multi.tasks[1])
        twice.tasks.add().CopyFrom(multi.tasks[1])
        twice.input.CopyFrom(regress.input)
        with pytest.raises(grpc.RpcError) as caught:
            service.MultiInference(twice, timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "Duplicate evaluation of signature: regress_x_to_y"
        regress.model_spec.signature_name = "serving_default"  # a Predict signature
        with pytest.raises(grpc.RpcError) as caught:
            service.Regress(regress, timeout=TIMEOUT)
        assert caught.value.details().startswith("No regression inputs found in SignatureDef")


def test_rest_regress_and_classify(linear):
    server, _ = linear
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 4.0}]}
    status, _, text = http("POST", f"{server.rest_url}/v1/models/tf1:regress",
                           json.dumps(body))
    assert status == 200, text
    assert json.loads(text) == {"results": [3.5, 5.0]}
    body["signature_name"] = "classify_x_to_y"
    status, _, text = http("POST", f"{server.rest_url}/v1/models/tf1:classify",
                           json.dumps(body))
    assert status == 200, text
    assert json.loads(text) == {"results": [[["", 3.5]], [["", 5.0]]]}
    # An empty examples list: TF Serving's message, which says "classify" for both verbs.
    status, _, text = http("POST", f"{server.rest_url}/v1/models/tf1:regress",
                           json.dumps({"examples": []}))
    assert status == 400 and "'examples' value is an empty array" in text


def test_connections_age_out_and_calls_go_on(linear):
    """--grpc_channel_arguments (main.cc): grpc.max_connection_age_ms closes each client
    connection after its age, so clients reconnect (in Kubernetes, through the Service to
    pods the HPA added); a channel's calls go on across it."""
    import time

    server, _ = linear
    channel, predict = stub(server.grpc_target)
    states = []
    channel.subscribe(states.append)
    with channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "tf2"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], dtype=tf.float32))
        deadline = time.monotonic() + 3 * AGE_MS / 1000
        answers = 0
        while time.monotonic() < deadline:
            assert tf.make_ndarray(predict.Predict(request, timeout=TIMEOUT).outputs["y"]
                                   ).tolist() == [4.0]
            answers += 1
            time.sleep(0.05)
    assert answers > 10
    # The connection went away at least once and came back (IDLE or CONNECTING again).
    ready = [i for i, s in enumerate(states) if s == grpc.ChannelConnectivity.READY]
    assert len(ready) >= 2, states


def test_a_model_status_over_the_unix_socket(linear):
    _, socket = linear
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "tf2"
        answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=TIMEOUT)
    assert [(v.version, v.state) for v in answer.model_version_status] == [(1, 30)]


def test_startup_refusals_say_tf_servings_line(tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { nme: 'x' } }\n")
    proc = run_cli("serving", "local", "--model_config_file", str(bad), "--port", "0",
                   timeout=60)
    assert proc.returncode == 2
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in proc.stderr
    proc = run_cli("serving", "local", "--model_name", "m", "--model_base_path",
                   str(tmp_path), "--grpc_channel_arguments=oops", timeout=60)
    assert proc.returncode == 2
    assert "--grpc_channel_arguments: 'oops' is not key=value" in proc.stderr
    proc = run_cli("serving", "local", "--model_name", "m", "--model_base_path",
                   str(tmp_path), "--prefer_tflite_model=true", timeout=60)
    assert proc.returncode == 2
    assert "--prefer_tflite_model: serving local runs SavedModels only" in proc.stderr


def test_duplicate_version_folders_load_one_and_say_so(tmp_path):
    """"1" and "01" are both version 1: TF Serving loads one and warns (IndexChildrenByVersion)."""
    write_tf2_linear_model(tmp_path / "m" / "01")
    write_tf2_linear_model(tmp_path / "m" / "1")
    server = LocalServer(["--model_name", "m", "--model_base_path", str(tmp_path / "m")],
                         tmp_path / "server.log").start(wait_for_model="m")
    try:
        status, _, text = http("POST", f"{server.rest_url}/v1/models/m:predict",
                               json.dumps({"instances": [2.0]}))
        assert status == 200 and json.loads(text)["predictions"] == [4.0]
    finally:
        assert server.stop() == 0
    assert "Duplicate version directories detected. Version 1 will be loaded from 1, 01 " \
           "will be ignored." in server.log_text()
