"""numpy -> TensorProto with typed `*_val` fields, which is what TF Serving sends by default
(tensor_content only with --enable_serialization_as_tensor_content)."""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_FIELD = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val", types_pb2.DT_STRING: "string_val",
    types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
}


def ndarray_to_proto(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]))
    field = _FIELD.get(dtype)
    if field is None:  # anything exotic: let TensorFlow pack it
        import tensorflow as tf

        return tf.make_tensor_proto(array)
    values = array.reshape(-1)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in values)
    else:
        getattr(proto, field).extend(values.tolist())
    return proto
