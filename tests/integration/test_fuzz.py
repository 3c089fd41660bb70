"""Hostile input, generated: the REST and gRPC APIs answer every malformed request with TF
Serving's error shape and a client-error code, never a 5xx, and stay up."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import grpc
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
CLIENT_ERRORS = {400, 404, 413}


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def png_bomb_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with garbage instead of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk +
            struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)


JPEG = _jpeg()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) |
    st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) |
    st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30)
image_bytes = st.one_of(
    st.binary(max_size=300),
    st.integers(1, len(JPEG) - 1).map(lambda n: JPEG[:n]),  # truncated JPEGs
    st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)).map(
        lambda wh: png_bomb_header(*wh)),  # huge declared dimensions
    st.just(b"GIF89a" + b"\xff\xff\xff\xff" + b"\x00" * 20),
    st.just(b"BM" + b"\x00" * 16 + b"\xff\xff\xff\x7f" * 2),
)
b64_strings = st.one_of(image_bytes.map(lambda b: base64.b64encode(b).decode()),
                        st.text(max_size=40))  # invalid base64 too
instances = st.one_of(
    st.lists(b64_strings.map(lambda s: {"b64": s}), min_size=0, max_size=4),
    st.lists(json_values, max_size=4),
    json_values,
    st.lists(st.lists(st.floats(-1e40, 1e40), max_size=4), max_size=3),
)
bodies = st.one_of(
    st.fixed_dictionaries({"instances": instances},
                          optional={"signature_name": st.sampled_from(
                              ["serving_default", "predict_images", "classify", "nope", 7])}),
    st.fixed_dictionaries({"inputs": st.one_of(instances, st.dictionaries(
        st.sampled_from(["image_bytes", "images", "x"]), instances, max_size=2))}),
    json_values,
)


def check_error_shape(response: requests.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code != 200:
        assert response.status_code in CLIENT_ERRORS, response.status_code
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str)


@FUZZ
@given(body=bodies, verb=st.sampled_from(["predict", "classify", "regress"]))
def test_rest_bodies(server, body, verb):
    response = requests.post(f"{server.rest_url}/v1/models/tiny:{verb}", timeout=120,
                             data=json.dumps(body, allow_nan=True))
    if verb == "regress":
        assert response.status_code in {400, 501}
        return
    check_error_shape(response)


@FUZZ
@given(data=image_bytes)
def test_rest_image_bytes(server, data):
    """Hostile image bytes are never a request error: the graph reports them per item
    (DESIGN section 4), so they cannot fail other clients' requests batched with them."""
    response = requests.post(f"{server.rest_url}/v1/models/tiny:predict", timeout=120,
                             json={"instances": [{"b64": base64.b64encode(data).decode()}]})
    assert response.status_code == 200, response.text[:300]
    [prediction] = response.json()["predictions"]
    if prediction["error"]:
        assert prediction["label"] == "" and not any(prediction["scores"])
    else:
        assert abs(sum(prediction["scores"]) - 1) < 1e-4


@FUZZ
@given(raw=st.binary(max_size=200))
def test_rest_raw_bytes(server, raw):
    check_error_shape(requests.post(f"{server.rest_url}/v1/models/tiny:predict", data=raw,
                                    timeout=60))


@FUZZ
@given(path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
       method=st.sampled_from(["GET", "POST", "DELETE", "PATCH"]))
def test_rest_paths(server, path, method):
    response = requests.request(method, f"{server.rest_url}/v1/models/{path}", timeout=60,
                                data="{}")
    assert response.status_code < 500, (path, response.status_code, response.text[:300])


DTYPES = [types_pb2.DT_STRING, types_pb2.DT_FLOAT, types_pb2.DT_INT32, types_pb2.DT_HALF,
          types_pb2.DT_BOOL, types_pb2.DT_INVALID, 999]
tensor_protos = st.builds(
    lambda dtype, dims, content, strings, floats: tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]),
        tensor_content=content, string_val=strings, float_val=floats),
    st.sampled_from(DTYPES), st.lists(st.integers(-2, 5), max_size=4),
    st.binary(max_size=64), st.lists(image_bytes, max_size=3),
    st.lists(st.floats(allow_nan=True, width=32), max_size=8))


@FUZZ
@given(proto=tensor_protos, alias=st.sampled_from(["image_bytes", "images", "inputs", ""]),
       signature=st.sampled_from(["", "serving_default", "predict_images", "x"]))
def test_grpc_malformed_tensor_protos(channel, proto, alias, signature):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = signature
    request.inputs[alias].CopyFrom(proto)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        stub.Predict(request, timeout=120)
    except grpc.RpcError as e:
        assert e.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                                grpc.StatusCode.UNAVAILABLE), (e.code(), e.details()[:300])


def test_the_server_is_still_healthy_after_the_fuzzing(server, tiny_model):
    path, data = tiny_model.files[0]
    response = requests.post(f"{server.rest_url}/v1/models/tiny:predict", timeout=120,
                             json={"instances": [{"b64": base64.b64encode(data).decode()}]})
    assert response.status_code == 200
