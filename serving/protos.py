"""The TF Serving gRPC messages the client uses, without TensorFlow.

`tensorflow-serving-api`'s generated modules import `tensorflow.core.framework`, which runs
all of TensorFlow's start-up (seconds) in a command that only sends a request. These
messages are declared here with the same packages, names and field numbers as upstream
(tensorflow_serving/apis/*.proto, tensorflow/core/framework/*.proto at TF Serving 2.20), in
a descriptor pool of their own, so the wire format is the same. Only the fields the client
reads or writes are declared; protobuf keeps any others as unknown fields.
"""

from __future__ import annotations

import numpy as np
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    wrappers_pb2,
)

_F = descriptor_pb2.FieldDescriptorProto
ONE, MANY = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
# tensorflow.DataType (tensorflow/core/framework/types.proto), by number.
DATA_TYPES = ["DT_INVALID", "DT_FLOAT", "DT_DOUBLE", "DT_INT32", "DT_UINT8", "DT_INT16",
              "DT_INT8", "DT_STRING", "DT_COMPLEX64", "DT_INT64", "DT_BOOL", "DT_QINT8",
              "DT_QUINT8", "DT_QINT32", "DT_BFLOAT16", "DT_QINT16", "DT_QUINT16", "DT_UINT16",
              "DT_COMPLEX128", "DT_HALF", "DT_RESOURCE", "DT_VARIANT", "DT_UINT32",
              "DT_UINT64"]
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_STRING, DT_INT64 = 1, 2, 3, 7, 9
# tensorflow.serving.ModelVersionStatus.State and tensorflow.error.Code, by number.
STATES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING",
          50: "END"}
ERROR_CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
               "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
               "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
               "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]


def _file(name: str, package: str, deps: list[str]) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3",
                                              dependency=deps)


def _message(fdp, name: str, fields: list[tuple], maps: dict | None = None) -> None:
    """fields: (name, number, type, type_name or None, label[, oneof index])."""
    msg = fdp.message_type.add(name=name)
    for entry_name, (key_type, value_type, value_type_name) in (maps or {}).items():
        entry = msg.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key_type, label=ONE)
        value = entry.field.add(name="value", number=2, type=value_type, label=ONE)
        if value_type_name:
            value.type_name = value_type_name
    oneofs = sorted({f[5] for f in fields if len(f) > 5})
    for oneof in oneofs:
        msg.oneof_decl.add(name=oneof)
    for field in fields:
        name_, number, kind, type_name, label = field[:5]
        f = msg.field.add(name=name_, number=number, type=kind, label=label)
        if type_name:
            f.type_name = type_name
        if len(field) > 5:
            f.oneof_index = oneofs.index(field[5])


def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in (wrappers_pb2, any_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)

    tf = _file("vgg16_transfer/tf_tensor.proto", "tensorflow", [])
    data_type = tf.enum_type.add(name="DataType")
    for number, name in enumerate(DATA_TYPES):
        data_type.value.add(name=name, number=number)
    _message(tf, "TensorShapeProto", [
        ("dim", 2, _F.TYPE_MESSAGE, ".tensorflow.TensorShapeProto.Dim", MANY),
        ("unknown_rank", 3, _F.TYPE_BOOL, None, ONE)])
    dim = tf.message_type[0].nested_type.add(name="Dim")
    dim.field.add(name="size", number=1, type=_F.TYPE_INT64, label=ONE)
    dim.field.add(name="name", number=2, type=_F.TYPE_STRING, label=ONE)
    _message(tf, "TensorProto", [
        ("dtype", 1, _F.TYPE_ENUM, ".tensorflow.DataType", ONE),
        ("tensor_shape", 2, _F.TYPE_MESSAGE, ".tensorflow.TensorShapeProto", ONE),
        ("tensor_content", 4, _F.TYPE_BYTES, None, ONE),
        ("float_val", 5, _F.TYPE_FLOAT, None, MANY),
        ("double_val", 6, _F.TYPE_DOUBLE, None, MANY),
        ("int_val", 7, _F.TYPE_INT32, None, MANY),
        ("string_val", 8, _F.TYPE_BYTES, None, MANY),
        ("int64_val", 10, _F.TYPE_INT64, None, MANY)])
    _message(tf, "TensorInfo", [
        ("name", 1, _F.TYPE_STRING, None, ONE, "encoding"),
        ("dtype", 2, _F.TYPE_ENUM, ".tensorflow.DataType", ONE),
        ("tensor_shape", 3, _F.TYPE_MESSAGE, ".tensorflow.TensorShapeProto", ONE)])
    _message(tf, "SignatureDef", [
        ("inputs", 1, _F.TYPE_MESSAGE, ".tensorflow.SignatureDef.InputsEntry", MANY),
        ("outputs", 2, _F.TYPE_MESSAGE, ".tensorflow.SignatureDef.OutputsEntry", MANY),
        ("method_name", 3, _F.TYPE_STRING, None, ONE)], maps={
        "InputsEntry": (_F.TYPE_STRING, _F.TYPE_MESSAGE, ".tensorflow.TensorInfo"),
        "OutputsEntry": (_F.TYPE_STRING, _F.TYPE_MESSAGE, ".tensorflow.TensorInfo")})
    pool.Add(tf)

    s = ".tensorflow.serving."
    ts = _file("vgg16_transfer/tf_serving_apis.proto", "tensorflow.serving",
               ["google/protobuf/wrappers.proto", "google/protobuf/any.proto",
                "vgg16_transfer/tf_tensor.proto"])
    _message(ts, "ModelSpec", [
        ("name", 1, _F.TYPE_STRING, None, ONE),
        ("version", 2, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", ONE, "version_choice"),
        ("version_label", 4, _F.TYPE_STRING, None, ONE, "version_choice"),
        ("signature_name", 3, _F.TYPE_STRING, None, ONE)])
    _message(ts, "PredictRequest", [
        ("model_spec", 1, _F.TYPE_MESSAGE, s + "ModelSpec", ONE),
        ("inputs", 2, _F.TYPE_MESSAGE, s + "PredictRequest.InputsEntry", MANY),
        ("output_filter", 3, _F.TYPE_STRING, None, MANY)],
        maps={"InputsEntry": (_F.TYPE_STRING, _F.TYPE_MESSAGE, ".tensorflow.TensorProto")})
    _message(ts, "PredictResponse", [
        ("outputs", 1, _F.TYPE_MESSAGE, s + "PredictResponse.OutputsEntry", MANY),
        ("model_spec", 2, _F.TYPE_MESSAGE, s + "ModelSpec", ONE)],
        maps={"OutputsEntry": (_F.TYPE_STRING, _F.TYPE_MESSAGE, ".tensorflow.TensorProto")})
    _message(ts, "StatusProto", [("error_code", 1, _F.TYPE_INT32, None, ONE),
                                 ("error_message", 2, _F.TYPE_STRING, None, ONE)])
    _message(ts, "ModelVersionStatus", [("version", 1, _F.TYPE_INT64, None, ONE),
                                        ("state", 2, _F.TYPE_INT32, None, ONE),
                                        ("status", 3, _F.TYPE_MESSAGE, s + "StatusProto", ONE)])
    _message(ts, "GetModelStatusRequest", [("model_spec", 1, _F.TYPE_MESSAGE, s + "ModelSpec",
                                            ONE)])
    _message(ts, "GetModelStatusResponse", [
        ("model_version_status", 1, _F.TYPE_MESSAGE, s + "ModelVersionStatus", MANY)])
    _message(ts, "GetModelMetadataRequest", [
        ("model_spec", 1, _F.TYPE_MESSAGE, s + "ModelSpec", ONE),
        ("metadata_field", 2, _F.TYPE_STRING, None, MANY)])
    _message(ts, "GetModelMetadataResponse", [
        ("model_spec", 1, _F.TYPE_MESSAGE, s + "ModelSpec", ONE),
        ("metadata", 2, _F.TYPE_MESSAGE, s + "GetModelMetadataResponse.MetadataEntry", MANY)],
        maps={"MetadataEntry": (_F.TYPE_STRING, _F.TYPE_MESSAGE, ".google.protobuf.Any")})
    _message(ts, "SignatureDefMap", [
        ("signature_def", 1, _F.TYPE_MESSAGE, s + "SignatureDefMap.SignatureDefEntry", MANY)],
        maps={"SignatureDefEntry": (_F.TYPE_STRING, _F.TYPE_MESSAGE, ".tensorflow.SignatureDef")})
    pool.Add(ts)
    return pool


_POOL = _pool()


def _cls(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(name))


PredictRequest = _cls("tensorflow.serving.PredictRequest")
PredictResponse = _cls("tensorflow.serving.PredictResponse")
GetModelStatusRequest = _cls("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponse = _cls("tensorflow.serving.GetModelStatusResponse")
GetModelMetadataRequest = _cls("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse = _cls("tensorflow.serving.GetModelMetadataResponse")
SignatureDefMap = _cls("tensorflow.serving.SignatureDefMap")

# Methods: (service path, request class, response class).
PREDICT = ("/tensorflow.serving.PredictionService/Predict", PredictRequest, PredictResponse)
GET_MODEL_METADATA = ("/tensorflow.serving.PredictionService/GetModelMetadata",
                      GetModelMetadataRequest, GetModelMetadataResponse)
GET_MODEL_STATUS = ("/tensorflow.serving.ModelService/GetModelStatus", GetModelStatusRequest,
                    GetModelStatusResponse)


def strings_tensor(values: list[bytes], proto) -> None:
    """Fill a TensorProto with a DT_STRING vector (as tf.make_tensor_proto does)."""
    proto.dtype = DT_STRING
    proto.tensor_shape.dim.add(size=len(values))
    proto.string_val.extend(values)


def to_ndarray(proto) -> np.ndarray:
    """A TensorProto of the dtypes a prediction returns, as numpy (as tf.make_ndarray)."""
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == DT_STRING:
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    np_dtype = {DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32,
                DT_INT64: np.int64}[proto.dtype]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape)
    values = {DT_FLOAT: proto.float_val, DT_DOUBLE: proto.double_val,
              DT_INT32: proto.int_val, DT_INT64: proto.int64_val}[proto.dtype]
    count = int(np.prod(shape)) if shape else 1
    array = np.array(list(values), dtype=np_dtype)
    if array.size == 1 and count > 1:  # TF's shorthand: one value fills the tensor
        array = np.full(count, array[0], dtype=np_dtype)
    return array.reshape(shape)
