"""`serving local` over gRPC with the official tensorflow-serving-api stubs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.integration.conftest import http

TIMEOUT = 60


@pytest.fixture(scope="module")
def predict(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(images: list[bytes], name="tiny", **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def classify_request(images: list[bytes], signature="classify"):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = signature
    for image in images:
        example = request.input.example_list.examples.add()
        example.features.feature["image/encoded"].bytes_list.value.append(image)
    return request


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=TIMEOUT)
    return e.value


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_predict_raw_bytes_matches_the_trainer(predict, tiny_model, fmt):
    path, data = tiny_model.image(fmt)
    response = predict.Predict(predict_request([data]), timeout=TIMEOUT)
    assert response.model_spec.name == "tiny"
    assert response.model_spec.version.value == 2  # latest
    assert response.model_spec.signature_name == "serving_default"
    scores = tf.make_ndarray(response.outputs["scores"])
    np.testing.assert_allclose(scores[0], tiny_model.expected[path], atol=1e-5)
    labels = tf.make_ndarray(response.outputs["label"])
    assert labels[0].decode() == tiny_model.classes[int(np.argmax(tiny_model.expected[path]))]
    assert response.outputs["scores"].float_val  # typed fields, like TF Serving's default


def test_output_filter_version_and_label(predict, tiny_model):
    path, data = tiny_model.files[0]
    request = predict_request([data], version=1)
    request.output_filter.append("label")
    response = predict.Predict(request, timeout=TIMEOUT)
    assert list(response.outputs) == ["label"] and response.model_spec.version.value == 1
    response = predict.Predict(predict_request([data], version_label="stable"),
                               timeout=TIMEOUT)
    assert response.model_spec.version.value == 1
    response = predict.Predict(predict_request([data], version_label="canary"),
                               timeout=TIMEOUT)
    assert response.model_spec.version.value == 2


def test_classify_example_list_and_context(predict, tiny_model):
    files = tiny_model.files[:2]
    response = predict.Classify(classify_request([d for _, d in files]), timeout=TIMEOUT)
    assert response.model_spec.signature_name == "classify"
    for (path, _), result in zip(files, response.result.classifications, strict=True):
        assert [c.label for c in result.classes] == tiny_model.classes
        np.testing.assert_allclose([c.score for c in result.classes],
                                   tiny_model.expected[path], atol=1e-5)

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = "classify"
    lists = request.input.example_list_with_context
    lists.context.features.feature["source"].bytes_list.value.append(b"test")
    lists.examples.add().features.feature["image/encoded"].bytes_list.value.append(files[0][1])
    response = predict.Classify(request, timeout=TIMEOUT)
    np.testing.assert_allclose([c.score for c in response.result.classifications[0].classes],
                               tiny_model.expected[files[0][0]], atol=1e-5)


def test_metadata_and_status(predict, models):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "tiny"
    request.metadata_field.append("signature_def")
    response = predict.GetModelMetadata(request, timeout=TIMEOUT)
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigmap)
    assert {"serving_default", "predict_images", "classify"} <= set(sigmap.signature_def)
    assert response.model_spec.version.value == 2

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "tiny"
    versions = models.GetModelStatus(status, timeout=TIMEOUT).model_version_status
    assert [(v.version, v.state) for v in versions] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def test_health_service_names_are_tf_servings(channel):
    """model_servers/server.cc registers "" (the default), "ModelService" and
    "PredictionService", unqualified; any other name is NOT_FOUND there, and here."""
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "PredictionService", "ModelService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    for service in ("tensorflow.serving.PredictionService", "nope"):
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def _bad_tensor_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    proto = request.inputs["image_bytes"]
    proto.dtype = tf.float32.as_datatype_enum
    proto.tensor_shape.dim.add(size=3)
    proto.tensor_content = b"\x00\x01"  # 2 bytes cannot be 3 floats
    return request


def _status_request(name, version=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return request


@pytest.mark.parametrize("case", [
    "unknown model", "unknown version", "unknown label", "unknown signature",
    "wrong alias", "extra input", "wrong dtype", "bad output filter", "duplicate filter",
    "bad tensor proto", "no model spec", "classify default signature",
    "classify empty input", "status unknown model", "status empty name",
    "status unknown version",
    "metadata without field", "regress", "multi inference",
])
def test_error_codes(predict, models, tiny_model, case):
    image = tiny_model.files[0][1]
    c = grpc.StatusCode
    if case == "unknown model":
        call, request = predict.Predict, predict_request([image], name="nope")
        expected = (c.NOT_FOUND, "Servable not found for request: Latest(nope)")
    elif case == "unknown version":
        call, request = predict.Predict, predict_request([image], version=9)
        expected = (c.NOT_FOUND, "Servable not found for request: Specific(tiny, 9)")
    elif case == "unknown label":
        call, request = predict.Predict, predict_request([image], version_label="nope")
        expected = (c.INVALID_ARGUMENT, "Unrecognized servable version label: nope")
    elif case == "unknown signature":
        call, request = predict.Predict, predict_request([image], signature_name="nope")
        expected = (c.FAILED_PRECONDITION, 'Serving signature key "nope" not found.')
    elif case == "wrong alias":
        call, request = predict.Predict, predict_request([image])
        request.inputs["images"].CopyFrom(request.inputs.pop("image_bytes"))
        expected = (c.INVALID_ARGUMENT, "Signature input alias: image_bytes(feed name: "
                    "serving_default_image_bytes:0) not found in request")
    elif case == "extra input":
        call, request = predict.Predict, predict_request([image])
        request.inputs["extra"].CopyFrom(request.inputs["image_bytes"])
        expected = (c.INVALID_ARGUMENT, "input size does not match signature: 2!=1 "
                    "len({extra,image_bytes}) != len({image_bytes}). Sent extra: {extra}. "
                    "Missing but required: {}.")
    elif case == "wrong dtype":
        call, request = predict.Predict, predict_request([image])
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([1.0]))
        expected = (c.INVALID_ARGUMENT, "Type mismatch: actual float vs. expect string")
    elif case == "bad output filter":
        call, request = predict.Predict, predict_request([image])
        request.output_filter.append("nope")
        expected = (c.INVALID_ARGUMENT, "output tensor alias not found in signature: nope")
    elif case == "duplicate filter":
        call, request = predict.Predict, predict_request([image])
        request.output_filter.extend(["label", "label"])
        expected = (c.INVALID_ARGUMENT, "duplicate output tensor alias: label")
    elif case == "bad tensor proto":
        call, request = predict.Predict, _bad_tensor_request()
        expected = (c.INVALID_ARGUMENT, "tensor parsing error: image_bytes")
    elif case == "no model spec":
        call, request = predict.Predict, predict_pb2.PredictRequest()
        expected = (c.INVALID_ARGUMENT, "Missing ModelSpec")
    elif case == "classify default signature":
        # serving_default has one input and five outputs (classifier.cc's order of checks)
        call, request = predict.Classify, classify_request([image], signature="")
        expected = (c.INVALID_ARGUMENT, "Expected one or two output Tensors, found 5")
    elif case == "classify empty input":
        call, request = predict.Classify, classify_request([])
        expected = (c.INVALID_ARGUMENT, "Input is empty.")
    elif case == "status empty name":  # get_model_status_impl.cc: NOT_FOUND, not INVALID
        call, request = models.GetModelStatus, _status_request("")
        expected = (c.NOT_FOUND, "Could not find any versions of model ")
    elif case == "status unknown model":
        call, request = models.GetModelStatus, _status_request("nope")
        expected = (c.NOT_FOUND, "Could not find any versions of model nope")
    elif case == "status unknown version":
        call, request = models.GetModelStatus, _status_request("tiny", 9)
        expected = (c.NOT_FOUND, "Could not find version 9 of model tiny")
    elif case == "metadata without field":
        call = predict.GetModelMetadata
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = "tiny"
        expected = (c.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one "
                    "metadata_field")
    elif case == "regress":
        # The classifier has no regression signature (regressor.cc, PreProcessRegression).
        call, request = predict.Regress, regression_pb2.RegressionRequest()
        request.model_spec.name = "tiny"
        expected = (c.INVALID_ARGUMENT, "Expected one output Tensor.")
    else:  # no task, so no model (ServerCore: an empty ModelSpec)
        call, request = predict.MultiInference, inference_pb2.MultiInferenceRequest()
        expected = (c.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    error = rpc_error(call, request)
    assert (error.code(), expected[1] in error.details()) == (expected[0], True), \
        error.details()


def test_a_bad_image_is_answered_per_item_not_as_an_error(predict, tiny_model):
    """DESIGN section 4 over gRPC: OK, with the reason in the `error` output."""
    path, good = tiny_model.files[0]
    response = predict.Predict(predict_request([b"not an image", good]), timeout=TIMEOUT)
    assert tf.make_ndarray(response.outputs["error"]).tolist() == [
        b"not a JPEG/PNG/GIF/BMP image", b""]
    scores = tf.make_ndarray(response.outputs["scores"])
    assert not scores[0].any()
    np.testing.assert_allclose(scores[1], tiny_model.expected[path], atol=1e-5)
    # Classify: the bad item's scores are all zero, which no good item's can be.
    result = predict.Classify(classify_request([b"not an image", good]), timeout=TIMEOUT)
    first, second = result.result.classifications
    assert [c.score for c in first.classes] == [0.0, 0.0]
    assert abs(sum(c.score for c in second.classes) - 1) < 1e-5


def test_grpc_requests_are_counted_under_their_api(server, predict, tiny_model):
    predict.Predict(predict_request([tiny_model.files[0][1]]), timeout=TIMEOUT)
    _, _, page = http("GET", f"{server.rest_url}/monitoring/prometheus/metrics")
    assert ':tensorflow:serving:request_latency_count{model_name="tiny",API="Predict",' \
        'entrypoint="GRPC"}' in page


def test_a_tiny_request_cannot_ask_for_terabytes(predict, tiny_model):
    """A TensorProto declaring [2**40] with one value: make_ndarray would allocate it all."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    proto = request.inputs["image_bytes"]
    proto.dtype = tf.string.as_datatype_enum
    proto.tensor_shape.dim.add(size=2**40)
    proto.string_val.append(b"x")
    assert request.ByteSize() < 100
    error = rpc_error(predict.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "declares 1099511627776 values" in error.details()
    # Still serving.
    assert predict.Predict(predict_request([tiny_model.files[0][1]]), timeout=TIMEOUT)


def test_one_string_repeated_to_fill_a_shape_is_counted_in_bytes(predict, tiny_model):
    """Issue 27, item 8: one 1 MB string_val declared as [500] is 500 MB once TensorFlow
    repeats it (as TF Serving's Tensor::FromProto would); refused before it is built."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    proto = request.inputs["image_bytes"]
    proto.dtype = tf.string.as_datatype_enum
    proto.tensor_shape.dim.add(size=500)
    proto.string_val.append(b"x" * 1_000_000)
    error = rpc_error(predict.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "declares 500 strings from 1 values; repeating the last one would make " \
        "500000000 bytes" in error.details()
    assert predict.Predict(predict_request([tiny_model.files[0][1]]), timeout=TIMEOUT)


def test_messages_over_the_request_limit_are_refused(server, predict):
    """The server fixture runs with --max-request-bytes 8000000: gRPC messages too."""
    request = predict_request([b"x" * 9_000_000])
    error = rpc_error(predict.Predict, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unknown_model_names_share_one_metrics_label(server, predict, tiny_model):
    for name in ("nope-a", "nope-b"):
        rpc_error(predict.Predict, predict_request([tiny_model.files[0][1]], name=name))
    _, _, page = http("GET", f"{server.rest_url}/monitoring/prometheus/metrics")
    assert 'model_name="<unknown model>"' in page
    assert "nope-a" not in page and "nope-b" not in page
