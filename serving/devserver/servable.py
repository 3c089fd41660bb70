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

    @property
    def inputs(self):
        return self.definition.inputs

    @property
    def outputs(self):
        return self.definition.outputs


def value_dtype_name(value: np.ndarray) -> str:
    """TensorFlow's name (DataTypeString) for a request tensor's dtype."""
    if value.dtype == object or value.dtype.kind in "SU":
        return "string"
    return dtype_name(tf.dtypes.as_dtype(value.dtype).as_datatype_enum)


@dataclass(frozen=True)
class SessionOptions:
    """What TF Serving puts in every model's SessionOptions (saved_model_bundle_factory.cc,
    main.cc): the thread pools (0: TensorFlow's defaults) and --mixed_precision=bfloat16's
    grappler rewrite."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    bfloat16: bool = False

    def config_proto(self):
        from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

        config = config_pb2.ConfigProto(
            intra_op_parallelism_threads=self.intra_op_threads,
            inter_op_parallelism_threads=self.inter_op_threads,
            allow_soft_placement=True)
        if self.bfloat16:
            config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = \
                rewriter_config_pb2.RewriterConfig.ON
        return config


SESSION_OPTIONS = SessionOptions()  # serving local sets it from its flags before loading


@dataclass
class Servable:
    """A version loaded the way TF Serving loads it (LoadSavedModel): its meta graph
    imported into a session of its own, variables restored and the init op run by
    TensorFlow's SavedModel loader, TF1 and TF2 SavedModels alike. A request feeds and
    fetches the SignatureDef's tensor names (Session::Run); nothing else is checked first."""

    model_name: str
    version: int
    path: Path
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    signatures: dict[str, Signature]
    session: object = field(repr=False)
    load_seconds: float = 0.0
    _callables: dict = field(default_factory=dict, repr=False)

    def signature_def_map(self):
        """What GetModelMetadata packs under "signature_def"."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        sigmap = get_model_metadata_pb2.SignatureDefMap()
        for name, definition in self.signature_defs.items():
            sigmap.signature_def[name].CopyFrom(definition)
        return sigmap

    def signature(self, name: str) -> Signature | None:
        return self.signatures.get(name or SERVING_DEFAULT)  # TF Serving's default key

    def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]):
        """A Session callable for these tensor names (DirectSession::MakeCallable), made
        once: it runs in C++ without the Python client's feed checks."""
        key = (feeds, fetches)
        found = self._callables.get(key)
        if found is None:
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
            try:
                # The session's own callable (what Session::MakeCallable makes in C++): the
                # arguments go to the runtime as they are, with no Python-side cast or
                # static-shape check (tf.compat.v1.Session.make_callable has both).
                found = self.session._make_callable_from_options(options)  # noqa: SLF001
            except tf.errors.OpError as e:  # a SignatureDef naming no such tensor
                raise from_tf_error(e) from e
            self._callables[key] = found
        return found

    def run(self, signature: Signature, inputs: dict[str, np.ndarray],
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Session::Run with the request's tensors fed to the signature's input names;
        errors of the run come back with TensorFlow's text and status."""
        aliases = sorted(inputs)
        wanted = sorted(set(outputs or signature.outputs))  # one callable per output set
        run = self._callable(tuple(signature.inputs[a].name for a in aliases),
                             tuple(signature.outputs[a].name for a in wanted))
        try:
            values = run(*[inputs[a] for a in aliases])
        except tf.errors.OpError as e:
            raise from_tf_error(e) from e
        except (TypeError, ValueError) as e:  # a value the session cannot take as a tensor
            raise invalid_argument(str(e).splitlines()[0]) from e
        found = {alias: np.asarray(v) for alias, v in zip(wanted, values, strict=True)}
        return {alias: found[alias] for alias in (outputs or signature.outputs)}


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
    """Load a SavedModel version the way TF Serving does (LoadSavedModel, tag 'serve'):
    TensorFlow's session loader, which restores the variables by name and runs the init
    op, for TF1 and TF2 SavedModels alike."""
    started = time.perf_counter()
    signature_defs = read_signature_defs(version_dir)
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=SESSION_OPTIONS.config_proto())
    try:
        from tensorflow.python.util import deprecation

        # The session loader is what TF Serving runs (LoadSavedModel); its Python wrapper
        # is marked deprecated in favour of the object loader, which is not.
        with graph.as_default(), deprecation.silence():
            tf.compat.v1.saved_model.loader.load(session, [SERVE_TAG], str(version_dir))
    except (tf.errors.OpError, OSError, ValueError, RuntimeError) as e:
        session.close()
        if isinstance(e, tf.errors.OpError):
            raise from_tf_error(e) from e
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"Failed to load SavedModel at {version_dir}: {e}") from e
    graph.finalize()  # requests only run it; nothing may add to it
    signatures = {name: Signature(name, definition)
                  for name, definition in signature_defs.items()}
    return Servable(model_name, version, version_dir, signature_defs, signatures, session,
                    time.perf_counter() - started)
