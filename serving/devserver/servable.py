"""A loaded model version: its SignatureDefs (from saved_model.pb, as TF Serving reads them)
and the functions that run them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from contract.names import SERVING_DEFAULT
from serving.devserver.errors import ServingError, from_tf_error, invalid_argument

log = logging.getLogger(__name__)
SERVE_TAG = "serve"

# TF's DataTypeString() names, which TF Serving puts in its messages.
DTYPE_NAMES = {
    types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double", types_pb2.DT_INT32: "int32",
    types_pb2.DT_UINT8: "uint8", types_pb2.DT_INT16: "int16", types_pb2.DT_INT8: "int8",
    types_pb2.DT_STRING: "string", types_pb2.DT_INT64: "int64", types_pb2.DT_BOOL: "bool",
    types_pb2.DT_UINT32: "uint32", types_pb2.DT_UINT64: "uint64", types_pb2.DT_HALF: "half",
    types_pb2.DT_BFLOAT16: "bfloat16", types_pb2.DT_UINT16: "uint16",
}


def dtype_name(dtype: int) -> str:
    return DTYPE_NAMES.get(dtype, types_pb2.DataType.Name(dtype).removeprefix("DT_").lower())


@dataclass
class Signature:
    name: str
    definition: meta_graph_pb2.SignatureDef
    function: object  # a ConcreteFunction

    @property
    def inputs(self):
        return self.definition.inputs

    @property
    def outputs(self):
        return self.definition.outputs


def _shape(info) -> list[int] | None:
    if info.tensor_shape.unknown_rank:
        return None
    return [d.size for d in info.tensor_shape.dim]


def value_dtype_name(value: np.ndarray) -> str:
    """TensorFlow's name (DataTypeString) for a request tensor's dtype."""
    if value.dtype == object or value.dtype.kind in "SU":
        return "string"
    return dtype_name(tf.dtypes.as_dtype(value.dtype).as_datatype_enum)


def check_feed(alias: str, info, value: np.ndarray, position: int) -> tf.DType:
    """The graph's dtype for a request tensor, or INVALID_ARGUMENT the way TF reports it."""
    expected = tf.dtypes.as_dtype(info.dtype)
    if expected == tf.string:
        ok = value.dtype == object or value.dtype.kind in "SU"
    else:
        ok = value.dtype == expected.as_numpy_dtype
    if not ok:
        raise invalid_argument(f"Expects arg[{position}] to be {dtype_name(info.dtype)} but "
                               f"{value_dtype_name(value)} is provided")
    shape = _shape(info)
    if shape is not None and (len(shape) != value.ndim or any(
            want not in (-1, got) for want, got in zip(shape, value.shape, strict=True))):
        raise invalid_argument(
            f"input tensor alias: {alias} has shape [{','.join(map(str, value.shape))}] but "
            f"the signature expects [{','.join(map(str, shape))}]")
    return expected


@dataclass
class Servable:
    model_name: str
    version: int
    path: Path
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    signatures: dict[str, Signature]
    loaded: object = field(repr=False)
    load_seconds: float = 0.0

    def signature_def_map(self):
        """What GetModelMetadata packs under "signature_def"."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        sigmap = get_model_metadata_pb2.SignatureDefMap()
        for name, definition in self.signature_defs.items():
            sigmap.signature_def[name].CopyFrom(definition)
        return sigmap

    def signature(self, name: str) -> Signature | None:
        return self.signatures.get(name or SERVING_DEFAULT)  # TF Serving's default key

    def validate(self, signature: Signature, inputs: dict[str, np.ndarray]
                 ) -> dict[str, tf.DType]:
        """dtype and shape of every input against the signature; returns the graph dtypes."""
        return {alias: check_feed(alias, signature.inputs[alias], inputs[alias], i)
                for i, alias in enumerate(sorted(inputs))}

    def run(self, signature: Signature, inputs: dict[str, np.ndarray],
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run a signature on validated inputs. TF runtime errors become ServingErrors."""
        feeds = {alias: tf.constant(inputs[alias], dtype=dtype)
                 for alias, dtype in self.validate(signature, inputs).items()}
        try:
            result = signature.function(**feeds)
        except tf.errors.OpError as e:
            raise from_tf_error(e) from e
        except (TypeError, ValueError) as e:  # binding failed: shapes the graph cannot take
            raise invalid_argument(str(e).splitlines()[0]) from e
        wanted = outputs or list(result)
        return {name: result[name].numpy() for name in wanted}


def read_signature_defs(version_dir: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    try:
        data = (version_dir / "saved_model.pb").read_bytes()
    except OSError as e:
        raise ServingError(grpc.StatusCode.NOT_FOUND, "Could not find SavedModel .pb or "
                           f".pbtxt at supplied export directory path: {version_dir}") from e
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise ServingError(grpc.StatusCode.DATA_LOSS, f"Could not parse SavedModel proto at "
                           f"{version_dir}: {e}") from e
    for meta in saved_model.meta_graphs:
        if SERVE_TAG in meta.meta_info_def.tags:
            return dict(meta.signature_def)
    raise ServingError(grpc.StatusCode.NOT_FOUND, "Could not find meta graph def matching "
                       f"supplied tags: {{ {SERVE_TAG} }}. To inspect available tag-sets in "
                       "the SavedModel, please use the SavedModel CLI: `saved_model_cli`")


def load_servable(model_name: str, version: int, version_dir: Path) -> Servable:
    """Load a SavedModel version the way TF Serving does (tag 'serve')."""
    started = time.perf_counter()
    signature_defs = read_signature_defs(version_dir)
    try:
        loaded = tf.saved_model.load(str(version_dir), tags=[SERVE_TAG])
    except (tf.errors.OpError, OSError, ValueError) as e:
        if isinstance(e, tf.errors.OpError):
            raise from_tf_error(e) from e
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"Failed to load SavedModel at {version_dir}: {e}") from e
    signatures = {name: Signature(name, signature_defs[name], fn)
                  for name, fn in loaded.signatures.items() if name in signature_defs}
    return Servable(model_name, version, version_dir, signature_defs, signatures, loaded,
                    time.perf_counter() - started)
