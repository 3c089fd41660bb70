"""TF Serving's REST JSON formats: request bodies to tensors, tensors to response bodies.

A faithful port of the rules in tensorflow_serving/util/json_tensor.cc: row ("instances")
and columnar ("inputs") requests, `{"b64": ...}` for any string input, dtype checks while
converting, the exact error messages, `"predictions"`/`"outputs"`/`"results"` responses,
and number formatting (shortest float that round-trips, `.0` on whole numbers, bare
NaN/Infinity tokens).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
from dataclasses import dataclass

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from serving.devserver.errors import ServingError, invalid_argument, unimplemented
from serving.devserver.servable import dtype_name

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


# ---------------------------------------------------------------------------------------
# Writing JSON the way rapidjson + WriteDecimal do.

@dataclass(frozen=True)
class Float32:
    """A float32 value: written with float precision ("0.524855614", not 17 digits)."""

    value: float


def decimal(value: float, float32: bool) -> str:
    """WriteDecimal(): %g if it round-trips, else max_digits10; '.0' on whole numbers."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    exact = np.float32(text) == np.float32(value) if float32 else float(text) == value
    if not exact:
        text = f"{value:.9g}" if float32 else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def dumps(value, indent: int | None = None, _level: int = 0) -> str:
    """Serialize dict/list/str/bytes/int/bool/float/Float32/None; `indent` pretty-prints
    like rapidjson's PrettyWriter (used in error messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, Float32):
        return decimal(value.value, True)
    if isinstance(value, float):
        return decimal(value, False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    pad = "" if indent is None else "\n" + " " * (indent * (_level + 1))
    end = "" if indent is None else "\n" + " " * (indent * _level)
    if isinstance(value, dict):
        if not value:
            return "{}"
        sep = ", " if indent is None else ","
        items = [f"{pad}{json.dumps(str(k), ensure_ascii=False)}: "
                 f"{dumps(v, indent, _level + 1)}" for k, v in value.items()]
        return "{" + sep.join(items) + end + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        sep = ", " if indent is None else ","
        return "[" + sep.join(f"{pad}{dumps(v, indent, _level + 1)}" for v in value) + end + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


MAX_DEBUG_STRING_BYTES = 256  # kMaxJsonDebugStringBytes


def value_string(value) -> str:
    """JsonValueToDebugString() (util/json_tensor.cc, TF Serving >= 2.18): how a JSON value
    is quoted in an error message. rapidjson's PrettyWriter (4-space indent) with
    kFormatSingleLineArray, behind a writer that stops at the first token it is handed once
    256 bytes are written (the token before the limit is written whole, so one huge string
    still comes out entire, as in TF Serving). NaN and infinities stop it too (rapidjson
    refuses to write them without kWriteNanAndInfFlag). The output may be cut mid-JSON."""
    return _DebugWriter().write(value)


class _Stop(Exception):
    pass


class _DebugWriter:
    def __init__(self):
        self.out: list[str] = []
        self.size = 0
        self.levels: list[list] = []  # [in_array, value_count]

    def _put(self, text: str) -> None:
        self.out.append(text)
        self.size += len(text.encode("utf-8"))

    def _indent(self) -> None:
        self._put(" " * (4 * len(self.levels)))

    def _prefix(self) -> None:  # PrettyWriter::PrettyPrefix
        if self.levels:
            level = self.levels[-1]
            if level[0]:  # in an array, single-line format
                if level[1] > 0:
                    self._put(", ")
            else:
                if level[1] > 0:
                    self._put(",\n" if level[1] % 2 == 0 else ": ")
                else:
                    self._put("\n")
                if level[1] % 2 == 0:
                    self._indent()
            level[1] += 1

    def _token(self) -> None:
        if self.size >= MAX_DEBUG_STRING_BYTES:  # JsonWriterWithLimit::InLimit
            raise _Stop

    def _scalar(self, text: str) -> None:
        self._token()
        self._prefix()
        self._put(text)

    def _value(self, value) -> None:
        if isinstance(value, dict):
            self._token()
            self._prefix()
            self._put("{")
            self.levels.append([False, 0])
            for key, item in value.items():
                self._scalar(_rapidjson_string(str(key)))
                self._value(item)
            self._token()
            empty = self.levels.pop()[1] == 0
            if not empty:
                self._put("\n")
                self._indent()
            self._put("}")
        elif isinstance(value, list):
            self._token()
            self._prefix()
            self._put("[")
            self.levels.append([True, 0])
            for item in value:
                self._value(item)
            self._token()
            self.levels.pop()
            self._put("]")
        elif value is None:
            self._scalar("null")
        elif isinstance(value, bool):
            self._scalar("true" if value else "false")
        elif isinstance(value, int) and -(2**63) <= value < 2**64:
            self._scalar(str(value))
        elif isinstance(value, int | float):
            if not math.isfinite(float(value)):
                self._token()
                raise _Stop  # rapidjson's Writer::Double refuses NaN and infinities
            self._scalar(_rapidjson_double(float(value)))
        else:
            self._scalar(_rapidjson_string(str(value)))

    def write(self, value) -> str:
        with contextlib.suppress(_Stop):
            self._value(value)
        return "".join(self.out)


def _rapidjson_string(text: str) -> str:
    """Writer::WriteString: backspace, form feed, newline, return, tab, quote and
    backslash as short escapes, other control characters as u-escapes with upper-case
    hex; everything else, non-ASCII included, as is."""
    short = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"',
             "\\": "\\\\"}
    out = []
    for ch in text:
        if ch in short:
            out.append(short[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _rapidjson_double(value: float) -> str:
    """Writer::Double (internal::dtoa + Prettify): the shortest round-trip digits, written
    "123.0", "0.001", "1e30" or "1.5e-7" as rapidjson chooses."""
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")  # shortest round-trip digits
    whole, _, frac = mantissa.partition(".")
    frac = frac.rstrip("0")
    digits = (whole + frac).lstrip("0")
    k = int(exponent or 0) - len(frac)  # value == int(digits) * 10**k
    trimmed = digits.rstrip("0")
    k += len(digits) - len(trimmed)
    digits = trimmed
    length = len(digits)
    kk = length + k
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif length == 1:
        text = digits + "e" + str(kk - 1)
    else:
        text = digits[0] + "." + digits[1:] + "e" + str(kk - 1)
    return sign + text


def error_body(message: str) -> str:
    return dumps({"error": message}, indent=4) + "\n"


# ---------------------------------------------------------------------------------------
# Parsing.

_PY_TO_RAPIDJSON = [
    (re.compile(r"^Expecting value"), "Invalid value."),
    (re.compile(r"^Expecting property name"), "Missing a name for object member."),
    (re.compile(r"^Expecting ':' delimiter"), "Missing a colon after a name of object member."),
    (re.compile(r"^Expecting ',' delimiter"), "Missing a comma or ']' after an array element."),
    (re.compile(r"^Extra data"), "The document root must not be followed by other values."),
    (re.compile(r"^Unterminated string"), "Missing a closing quotation mark in string."),
    (re.compile(r"^Invalid \\escape"), "Invalid escape character in string."),
    (re.compile(r"^Invalid \\uXXXX"), "Incorrect hex digit after \\u escape in string."),
    (re.compile(r"^Invalid control character"), "Invalid encoding in string."),
]


def parse_json(body: bytes) -> dict:
    """ParseJson(): the document must be a JSON object. NaN/Infinity are accepted."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        # Bytes after the root value are ignored, as rapidjson's kParseStopWhenDoneFlag does
        # in TF Serving (util/json_tensor.cc).
        text = body.decode("utf-8")
        start = len(text) - len(text.lstrip(" \t\n\r"))
        if start == len(text):
            raise invalid_argument("JSON Parse error: The document is empty")
        doc, _end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as e:
        message = next((m for pattern, m in _PY_TO_RAPIDJSON if pattern.match(e.msg)),
                       "Unspecific syntax error.")
        raise invalid_argument(f"JSON Parse error: {message} at offset: {e.pos}") from e
    except (UnicodeDecodeError, RecursionError) as e:
        raise invalid_argument("JSON Parse error: Invalid encoding in string. at offset: 0") \
            from e
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {value_string(doc)} Is not object")
    return doc


def signature_name(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {value_string(doc)} not formatted correctly. "
                               "'signature_name' key must be a string value.")
    return name


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value, dtype: int) -> ServingError:
    return invalid_argument(f"JSON Value: {value_string(value)} Type: {_json_type(value)} is "
                            f"not of expected type: {dtype_name(dtype)}")


def _is_b64_object(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_b64(value) -> bytes:
    if not _is_b64_object(value):
        raise invalid_argument(f"JSON Value: {value_string(value)} not formatted correctly "
                               "for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as e:
        # absl::Base64Unescape also accepts web-safe alphabet and missing padding.
        text = value["b64"].replace("-", "+").replace("_", "/")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument("Unable to base64 decode") from e


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _scalar(value, dtype: int):
    """AddValueToTensor(): one JSON scalar as a value of `dtype`, or TF Serving's error."""
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if not (_is_int(value) or isinstance(value, float)):
            raise _type_error(value, dtype)
        # No precision check: TF Serving dropped its "lossy float" check in 2.5; a value a
        # float cannot hold becomes the nearest one (infinity beyond its range).
        return float(value)
    if dtype in (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8,
                 types_pb2.DT_UINT8):
        if not (_is_int(value) and INT32[0] <= value <= INT32[1]):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_INT64:
        if not (_is_int(value) and INT64[0] <= value <= INT64[1]):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_UINT32:
        if not (_is_int(value) and 0 <= value <= UINT32_MAX):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_UINT64:
        if not (_is_int(value) and 0 <= value <= UINT64_MAX):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    raise unimplemented(f"Conversion of JSON Value: {value_string(value)} to type: "
                        f"{dtype_name(dtype)}")


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, dtype: int, shape: list[int], out: list) -> None:
    """FillTensorProto(): walk the nested lists, checking sizes and levels."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {value_string(value)} found at incorrect "
                                   f"level: {level + 1} in the JSON DOM. Expected at level: "
                                   f"{rank}")
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            out.append(_decode_b64(value))
        else:
            out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < "
                               f"{rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: "
                               f"{level} expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, dtype, shape, out)


_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
          types_pb2.DT_INT32: np.int32, types_pb2.DT_INT16: np.int16,
          types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8,
          types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT32: np.uint32,
          types_pb2.DT_UINT64: np.uint64, types_pb2.DT_BOOL: np.bool_,
          types_pb2.DT_STRING: object}


def _tensor(value, dtype: int) -> tuple[np.ndarray, list[int]]:
    shape = _dense_shape(value)
    out: list = []
    _fill(value, 0, dtype, shape, out)
    np_dtype = _NUMPY.get(dtype, object)
    array = np.empty(len(out), dtype=np_dtype)
    if len(out):
        with np.errstate(over="ignore"):  # a double beyond float's range becomes infinity
            array[:] = out
    return array.reshape(shape), shape


def _is_element_object(value) -> bool:
    return isinstance(value, dict) and not _is_b64_object(value)


def predict_inputs(doc: dict, signature_inputs) -> tuple[dict[str, np.ndarray], str]:
    """FillPredictRequestFromJson(): tensors from "instances" (row) or "inputs" (columnar);
    returns (tensors, "row" | "columnar")."""
    infos = {alias: info.dtype for alias, info in signature_inputs.items()}
    if not infos:
        raise invalid_argument("Failed to get input map for signature")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(f"JSON Value: {value_string(doc)} Not formatted correctly "
                               "expecting only one of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {value_string(doc)} Expecting 'instances' "
                                   "to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {value_string(doc)} No values in "
                                   "'instances' array")
        return _from_instances(instances, infos), "row"
    if has_inputs:
        return _from_inputs(doc["inputs"], infos), "columnar"
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list, infos: dict[str, int]) -> dict[str, np.ndarray]:
    first = instances[0]
    if not isinstance(first, dict) and len(infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as "
                               "multiple input tensors required as per tensorinfo_map")
    objects = _is_element_object(first)
    names = sorted(infos)
    columns: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add(item, name: str) -> None:
        if name not in infos:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        array, shape = _tensor(item, infos[name])
        if name not in sizes:
            sizes[name], shapes[name] = array.size, shape
        elif sizes[name] != array.size:
            raise invalid_argument(f"Expecting tensor size: {sizes[name]} but got: "
                                   f"{array.size}")
        elif shapes[name] != shape:
            raise invalid_argument(f"Expecting shape [{','.join(map(str, shapes[name]))}] but "
                                   f"got: [{','.join(map(str, shape))}]")
        columns.setdefault(name, []).append(array)

    for i, element in enumerate(instances):
        if objects:
            if not _is_element_object(element):
                raise invalid_argument(f"Expecting object but got list at item {i} of input "
                                       "list")
            for key, item in element.items():
                try:
                    add(item, key)
                except ServingError as e:
                    raise invalid_argument(f"Failed to process element: {i} key: {key} of "
                                           f"'instances' list. Error: "
                                           f"{e.code_name}: {e.message}") from e
            if set(element) != set(names):
                raise invalid_argument(f"Failed to process element: {i} of 'instances' list. "
                                       f"JSON object: {value_string(element)} keys must be "
                                       f"equal to: {','.join(names)}")
        else:
            if _is_element_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {i} of "
                                       "input list")
            try:
                add(element, names[0])
            except ServingError as e:
                raise invalid_argument(f"Failed to process element: {i} of 'instances' list. "
                                       f"Error: {e.code_name}: {e.message}") from e
    return {name: np.stack(arrays) for name, arrays in columns.items()}


def _from_inputs(value, infos: dict[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64_object(value):
        if len(infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as "
                                   "multiple input tensors required as per tensorinfo_map")
        name = next(iter(infos))
        return {name: _tensor(value, infos[name])[0]}
    tensors = {}
    for name in sorted(infos):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(value[name], infos[name])[0]
    return tensors


# ---------------------------------------------------------------------------------------
# Classify/Regress requests: JSON objects to tf.Examples.

def _add_feature_value(value, name: str, feature: feature_pb2.Feature) -> None:
    kind = feature.WhichOneof("kind")

    def need(expected: str) -> None:
        if kind not in (None, expected):
            label = {"bytes_list": "bytes", "float_list": "float",
                     "int64_list": "int64"}[kind]
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting "
                                   f"type: {label}")

    if value is None or isinstance(value, list) or \
            (isinstance(value, dict) and not _is_b64_object(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: "
                               f"{_json_type(value)}")
    if isinstance(value, bool):
        need("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        need("bytes_list")
        feature.bytes_list.value.append(_decode_b64(value))
    elif isinstance(value, str):
        need("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, float):
        need("float_list")
        feature.float_list.value.append(value)
    else:
        need("int64_list")
        if value > INT64[1]:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is "
                                   "supported.")
        feature.int64_list.value.append(value)


def _example(value) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)
    return example


def classify_examples(doc: dict) -> list[bytes]:
    """FillClassificationRequestFromJson(): serialized Examples, context merged in."""
    context = b""
    if "context" in doc:
        context = _example(doc["context"]).SerializeToString()
    if "examples" not in doc:
        raise invalid_argument(f"JSON Value: {value_string(doc)} When method is classify, key "
                               "'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {value_string(doc)} Expecting 'examples' value to "
                               "be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {value_string(doc)} 'examples' value is an empty "
                               "array")
    return [context + _example(e).SerializeToString() for e in examples]


# ---------------------------------------------------------------------------------------
# Responses.

def _json_values(array: np.ndarray, as_bytes: bool):
    """Nested lists of JSON-writable values for one tensor (or one row of it)."""
    if array.dtype == object or array.dtype.kind in "SU":
        def convert(x):
            x = x if isinstance(x, bytes) else str(x).encode()
            return {"b64": base64.b64encode(x).decode()} if as_bytes else x
    elif array.dtype == np.float32:
        def convert(x):
            return Float32(float(x))
    elif array.dtype.kind == "f":
        def convert(x):
            return float(x)
    elif array.dtype == np.bool_:
        def convert(x):
            return bool(x)
    elif array.dtype.kind in "iu":
        def convert(x):
            return int(x)
    else:
        raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")
    if array.ndim == 0:
        return convert(array.item() if array.dtype != object else array[()])
    flat = [convert(x) for x in array.reshape(-1).tolist()]
    for dim in reversed(array.shape[1:]):
        flat = [flat[i:i + dim] for i in range(0, len(flat), dim)] if dim else \
            [[] for _ in range(len(flat))]
    return flat


def predict_response(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """MakeJsonFromTensors(): {"predictions": [...]} (row) or {"outputs": ...} (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == "columnar":
        values = {n: _json_values(outputs[n], n.endswith("_bytes")) for n in names}
        body = values[names[0]] if len(names) == 1 else values
        return dumps({"outputs": body}) + "\n"
    batch = None
    for n in names:
        if outputs[n].ndim == 0:
            raise invalid_argument(f"Tensor name: {n} has no shape information ")
        if batch is not None and outputs[n].shape[0] != batch:
            raise invalid_argument(f"Tensor name: {n} has inconsistent batch size: "
                                   f"{outputs[n].shape[0]} expecting: {batch}")
        batch = outputs[n].shape[0]
    rows = {n: _json_values(outputs[n], n.endswith("_bytes")) for n in names}
    if len(names) == 1:
        predictions = rows[names[0]]
    else:
        predictions = [{n: rows[n][i] for n in names} for i in range(batch)]
    return dumps({"predictions": predictions}) + "\n"


def classify_response(results: list[list[tuple[str, float]]]) -> str:
    """MakeJsonFromClassificationResult(): {"results": [[[label, score], ...], ...]}."""
    if not results:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    body = [[[label, Float32(score)] for label, score in classes] for classes in results]
    return dumps({"results": body}) + "\n"


def regress_response(values: list[float]) -> str:
    """MakeJsonFromRegressionResult(): {"results": [value, ...]}."""
    if not values:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return dumps({"results": [Float32(v) for v in values]}) + "\n"
