"""TF Serving's JSON rules (util/json_tensor.cc), checked without a server.

Multi-input and non-string signatures do not exist in this project's models, so the parts
of the error catalogue that need them are exercised here on hand-made SignatureDef inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.devserver.errors import ServingError
from serving.devserver.rest_json import (
    classify_examples,
    classify_response,
    decimal,
    parse_json,
    predict_inputs,
    predict_response,
    value_string,
)


def inputs(**dtypes: int):
    sig = meta_graph_pb2.SignatureDef()
    for name, dtype in dtypes.items():
        sig.inputs[name].dtype = dtype
    return sig.inputs


def error(fn, *args) -> str:
    with pytest.raises(ServingError) as e:
        fn(*args)
    assert e.value.http_status == 400 or e.value.code.name == "UNIMPLEMENTED"
    return e.value.message


@pytest.mark.parametrize("value, f32, text", [
    (3.0, True, "3.0"), (0.5248556, True, "0.524855614"), (0.25, True, "0.25"),
    (9e6, True, "9e+06"), (3e-05, True, "3e-05"), (float("nan"), True, "NaN"),
    (float("-inf"), True, "-Infinity"), (0.1, False, "0.1"),
    (0.1 + 0.2, False, "0.30000000000000004"), (0.123456789, False, "0.123456789"),
])
def test_numbers_are_written_like_write_decimal(value, f32, text):
    if f32:
        value = float(np.float32(value))
    assert decimal(value, f32) == text


@pytest.mark.parametrize("body, message", [
    (b"", "JSON Parse error: The document is empty"),
    (b"{oops", "JSON Parse error: Missing a name for object member. at offset: 1"),
    (b"nope", "JSON Parse error: Invalid value. at offset: 0"),
    (b"[1]", "JSON Value: [1] Is not object"),
])
def test_parse_errors(body, message):
    assert error(parse_json, body).startswith(message)


def test_nan_and_infinity_are_accepted_tokens():
    doc = parse_json(b'{"inputs": [NaN, Infinity, -Infinity]}')
    tensors, fmt = predict_inputs(doc, inputs(x=types_pb2.DT_FLOAT))
    assert fmt == "columnar" and np.isnan(tensors["x"][0]) and tensors["x"][1] == np.inf


def test_row_format_batches_instances_and_checks_shapes():
    sig = inputs(x=types_pb2.DT_FLOAT)
    tensors, fmt = predict_inputs({"instances": [[1.0, 2.0], [3.0, 4.0]]}, sig)
    assert fmt == "row" and tensors["x"].dtype == np.float32
    np.testing.assert_array_equal(tensors["x"], [[1, 2], [3, 4]])
    assert error(predict_inputs, {"instances": [[1.0, 2.0], [3.0]]}, sig) == (
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
        "Expecting tensor size: 2 but got: 1")
    assert "Encountered list at unexpected size: 1 at level: 1 expected size: 2" in error(
        predict_inputs, {"instances": [[[1.0, 2.0], [3.0]]]}, sig)
    assert "Encountered list at unexpected level: 1 expected < 1" in error(
        predict_inputs, {"instances": [[1.0, [2.0]]]}, sig)
    assert "JSON Value: 2.0 found at incorrect level: 2 in the JSON DOM. Expected at level: 2" \
        in error(predict_inputs, {"instances": [[[1.0], 2.0]]}, sig)


def test_multi_input_row_and_columnar_rules():
    sig = inputs(a=types_pb2.DT_INT32, b=types_pb2.DT_STRING)
    tensors, _ = predict_inputs({"instances": [{"a": 1, "b": "x"}, {"a": 2, "b": {"b64":
                                                                                  "eQ=="}}]}, sig)
    assert tensors["a"].tolist() == [1, 2] and tensors["b"].tolist() == [b"x", b"y"]
    assert error(predict_inputs, {"instances": [1, 2]}, sig).startswith(
        "instances is a plain list, but expecting list of objects as multiple input tensors")
    assert error(predict_inputs, {"instances": [{"a": 1}]}, sig).endswith(
        "keys must be equal to: a,b")
    assert error(predict_inputs, {"inputs": {"a": [1]}}, sig) == \
        "Missing named input: b in 'inputs' object."
    tensors, _ = predict_inputs({"inputs": {"a": [1, 2, 3], "b": ["q"], "extra": 1}}, sig)
    assert tensors["a"].shape == (3,) and tensors["b"].shape == (1,)  # extra keys ignored
    assert error(predict_inputs, {"inputs": [1]}, sig).startswith(
        "inputs is a plain value/list, but expecting an object")


@pytest.mark.parametrize("value, dtype, message", [
    ("x", types_pb2.DT_FLOAT, 'JSON Value: "x" Type: String is not of expected type: float'),
    (1.5, types_pb2.DT_INT32, "JSON Value: 1.5 Type: Number is not of expected type: int32"),
    (True, types_pb2.DT_FLOAT, "JSON Value: true Type: True is not of expected type: float"),
    (1, types_pb2.DT_BOOL, "JSON Value: 1 Type: Number is not of expected type: bool"),
    (1.0, types_pb2.DT_HALF, "Conversion of JSON Value: 1.0 to type: half"),
])
def test_dtype_checks_while_converting(value, dtype, message):
    assert message in error(predict_inputs, {"inputs": [value]}, inputs(x=dtype))


def test_no_lossy_float_check_since_tf_serving_2_5():
    """util/json_tensor.cc dropped IsLosslessDecimal in 2.5: big ints and doubles beyond a
    float's range convert (to the nearest float, infinity beyond the range)."""
    with np.errstate(over="ignore"):
        tensors, _ = predict_inputs({"inputs": [2**40, 1e40]}, inputs(x=types_pb2.DT_FLOAT))
    assert tensors["x"][0] == 2.0**40 and np.isinf(tensors["x"][1])


def test_bytes_after_the_json_value_are_ignored_as_tf_serving_does():
    """rapidjson's kParseStopWhenDoneFlag (util/json_tensor.cc): the root value ends it."""
    assert parse_json(b'  {"instances": [1]} trailing garbage') == {"instances": [1]}
    assert parse_json(b'{"a": 1}{"b": 2}') == {"a": 1}
    assert "The document is empty" in error(parse_json, b"   ")


def test_values_in_messages_are_cut_like_json_value_to_debug_string():
    """JsonValueToDebugString (util/json_tensor.cc, TF Serving >= 2.18): PrettyWriter with
    single-line arrays, and no token written once 256 bytes are out."""
    assert value_string([1, 2.0, "x"]) == '[1, 2.0, "x"]'
    assert value_string({"instances": [{"b64": "abc"}], "x": None}) == (
        '{\n    "instances": [{\n            "b64": "abc"\n        }],\n    "x": null\n}')
    many = value_string({"instances": [{"b64": "a" * 100}] * 50, "inputs": [1]})
    assert len(many) < 256 + 120 and not many.endswith("}")  # cut, not megabytes
    assert value_string([1, float("nan"), 2]) == "[1"  # rapidjson will not write NaN
    message = error(predict_inputs, {"instances": [{"b64": "x" * 300}] * 1000,
                                     "inputs": [1]}, inputs(x=types_pb2.DT_STRING))
    assert len(message) < 1000, len(message)


def test_b64_objects_decode_for_any_string_input_and_fail_clearly():
    sig = inputs(anything=types_pb2.DT_STRING)
    tensors, _ = predict_inputs({"instances": [{"b64": "aGk="}, {"b64": "aGk"}]}, sig)
    assert tensors["anything"].tolist() == [b"hi", b"hi"]  # padding optional, as absl
    assert "Unable to base64 decode" in error(predict_inputs, {"instances": [{"b64": "*"}]},
                                              sig)
    assert "is not of expected type: float" in error(
        predict_inputs, {"instances": [{"b64": "aGk="}]}, inputs(x=types_pb2.DT_FLOAT))


def test_request_shape_errors():
    sig = inputs(x=types_pb2.DT_FLOAT)
    assert error(predict_inputs, {"instances": [1.0], "inputs": [1.0]}, sig).endswith(
        "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
    assert error(predict_inputs, {"instances": 1.0}, sig).endswith(
        "Expecting 'instances' to be an list/array")
    assert error(predict_inputs, {"foo": 1}, sig) == "Missing 'inputs' or 'instances' key"


def test_responses():
    one = predict_response({"y": np.array([1.5, 2.0], np.float32)}, "row")
    assert json.loads(one) == {"predictions": [1.5, 2.0]}
    several = predict_response({"label": np.array([b"a"], object),
                                "scores": np.array([[0.25, 0.75]], np.float32)}, "row")
    assert json.loads(several) == {"predictions": [{"label": "a", "scores": [0.25, 0.75]}]}
    columnar = predict_response({"png_bytes": np.array([b"\x89"], object)}, "columnar")
    assert json.loads(columnar) == {"outputs": [{"b64": "iQ=="}]}  # _bytes suffix: base64
    assert "has inconsistent batch size" in error(
        predict_response, {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}, "row")
    assert json.loads(classify_response([[("a", 0.25), ("b", 0.75)]])) == {
        "results": [[["a", 0.25], ["b", 0.75]]]}


def test_classify_examples_and_context():
    examples = classify_examples({"context": {"k": 1}, "examples": [
        {"image/encoded": {"b64": "aGk="}, "f": 2.5, "i": [1, 2], "flag": True}]})
    from tensorflow.core.example import example_pb2

    merged = example_pb2.Example.FromString(examples[0])
    features = merged.features.feature
    assert features["image/encoded"].bytes_list.value == [b"hi"]
    assert features["f"].float_list.value == [2.5]
    assert features["i"].int64_list.value == [1, 2] and features["flag"].int64_list.value == [1]
    assert features["k"].int64_list.value == [1]  # the context, merged into every example
    assert "key 'examples' is expected and was not found" in error(classify_examples, {})
    assert "'examples' value is an empty array" in error(classify_examples, {"examples": []})
    assert error(classify_examples, {"examples": [{"x": [1, 2.5]}]}) == \
        "Unexpected element type in feature: x expecting type: int64"
    assert error(classify_examples, {"examples": [{"x": None}]}) == \
        "Feature: x has element with unexpected JSON type: Null"
