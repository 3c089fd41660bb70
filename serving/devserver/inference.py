"""Predict, Classify, Regress and MultiInference with TF Serving's checks and messages,
whatever the transport.

REST, gRPC and warmup replay all come through here, so a request is validated the same way
however it arrives. Batching, when enabled, sits between this and the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from contract.names import CLASSIFY_INPUT, SERVING_DEFAULT, WARMUP_FILE
from serving.devserver.errors import (
    deadline_exceeded,
    failed_precondition,
    invalid_argument,
    unimplemented,
)
from serving.devserver.servable import Servable, Signature

MAX_WARMUP_RECORDS = 1000  # TF Serving's kMaxNumRecords


@dataclass(frozen=True)
class ModelRef:
    """Which servable a request asks for: latest, a version, or a label."""

    name: str
    version: int | None = None
    label: str | None = None


def _keys(keys) -> str:
    return ",".join(sorted(keys))


def predict_signature(servable: Servable, name: str, rest: bool) -> Signature:
    signature = servable.signature(name)
    if signature is None:
        name = name or SERVING_DEFAULT
        if rest:
            raise invalid_argument(f'Serving signature name: "{name}" not found in signature '
                                   "def")
        raise failed_precondition(f'Serving signature key "{name}" not found.')
    return signature


def check_predict_inputs(signature: Signature, inputs: dict, output_filter: list[str]) -> None:
    """TF Serving's PreProcessPrediction checks (servables/tensorflow/predict_util.cc)."""
    wanted = set(signature.inputs)
    sent = set(inputs)
    if len(sent) != len(wanted):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{_keys(sent)}}}) != len({{{_keys(wanted)}}}). Sent extra: "
            f"{{{_keys(sent - wanted)}}}. Missing but required: {{{_keys(wanted - sent)}}}.")
    for alias in sorted(wanted - sent):
        info = signature.inputs[alias]
        raise invalid_argument(
            f"Signature input alias: {alias}(feed name: {info.name}) not found in request and "
            f"no default value provided. Inputs expected to be in the request {{{_keys(wanted)}}}"
            ", or default input alias set: ")
    seen = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} "
                                   f"Outputs expected to be in the set "
                                   f"{{{_keys(signature.outputs)}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)


def _named_signature(servable: Servable, name: str, check) -> Signature:
    """The signature `name` (serving_default when empty), passed through `check`: the
    lookup classifier.cc and regressor.cc share."""
    name = name or SERVING_DEFAULT
    signature = servable.signature(name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    check(signature)
    return signature


def classify_signature(servable: Servable, name: str) -> Signature:
    """TF Serving's checks for a signature used with the Classify API (classifier.cc)."""
    return _named_signature(servable, name, _classify_names)


REGRESS_INPUT, REGRESS_OUTPUT = "inputs", "outputs"  # kRegressInputs, kRegressOutputs
CLASSIFY_METHOD = "tensorflow/serving/classify"  # kClassifyMethodName
REGRESS_METHOD = "tensorflow/serving/regress"


def regress_signature(servable: Servable, name: str) -> Signature:
    """TF Serving's checks for a signature used with the Regress API (regressor.cc,
    GetRegressionSignatureDef and PreProcessRegression, without the method-name check,
    which --enable_signature_method_name_check turns on and is off by default)."""
    return _named_signature(servable, name, _regress_names)


def _regress_names(signature: Signature) -> None:
    definition = text_format.MessageToString(signature.definition)
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUT not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {definition}")
    if REGRESS_OUTPUT not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {definition}")


def _classify_names(signature: Signature) -> None:
    """PreProcessClassification (classifier.cc): one input, named `inputs`; one or two
    outputs, `classes` and/or `scores`."""
    definition = text_format.MessageToString(signature.definition)
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found "
                               f"{len(signature.outputs)}")
    if CLASSIFY_INPUT not in signature.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {definition}")
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise invalid_argument('Expected classification signature outputs to contain at least '
                               f'one of "classes" or "scores". Signature was: {definition}')


def regression_values(value: np.ndarray, batch: int) -> list[float]:
    """PostProcessRegressionResult (regressor.cc): [batch] or [batch, 1] floats."""
    if not (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)):
        raise invalid_argument("Expected output Tensor shape to be either [batch_size] or "
                               f"[batch_size, 1] but got [{','.join(map(str, value.shape))}]")
    if value.shape[0] != batch:
        raise invalid_argument(f"Input batch size did not match output batch size: {batch} "
                               f"vs. {value.shape[0]}")
    if value.dtype != np.float32:
        name = "DT_STRING" if value.dtype == object else \
            types_pb2.DataType.Name(_dtype_enum(value))
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {name}")
    return [float(v) for v in value.reshape(-1)]


def _dtype_enum(value: np.ndarray) -> int:
    import tensorflow as tf

    return tf.dtypes.as_dtype(value.dtype).as_datatype_enum


def classification_results(outputs: dict[str, np.ndarray], batch: int
                           ) -> list[list[tuple[str, float]]]:
    """PostProcessClassificationResult (classifier.cc): per example, (label, score)s."""
    check_classify_outputs(outputs, batch)
    classes, scores = outputs.get("classes"), outputs.get("scores")
    n_classes = (classes if classes is not None else scores).shape[1]
    return [[(classes[i, c].decode("utf-8", "replace") if classes is not None else "",
              float(scores[i, c]) if scores is not None else 0.0)
             for c in range(n_classes)] for i in range(batch)]


def check_classify_outputs(outputs: dict[str, np.ndarray], batch: int) -> None:
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for name, value, kind in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if value is None:
            continue
        if (kind == "DT_STRING") != (value.dtype == object):
            raise invalid_argument(f"Expected {name} Tensor of {kind}. Got: {value.dtype}")
        if value.ndim != 2 or value.shape[0] != batch:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got "
                                   f"[{','.join(map(str, value.shape))}]")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise invalid_argument(f"Tensors class and score should match in dim[1]. "
                               f"{classes.shape[1]} vs {scores.shape[1]}")


class Inference:
    """Runs validated requests on servables, through the batcher when there is one."""

    def __init__(self, batcher=None):
        self.batcher = batcher

    def _run(self, servable: Servable, signature: Signature, inputs: dict[str, np.ndarray],
             outputs: list[str] | None = None, timeout: float | None = None
             ) -> dict[str, np.ndarray]:
        """`timeout` (seconds, None: none) is the run's deadline, as TF Serving passes a
        RunOptions timeout: the REST timeout, or what is left of a gRPC deadline. The model
        call itself cannot be interrupted here (TF Serving's session aborts it); a run that
        ends past the deadline is answered DEADLINE_EXCEEDED all the same."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.batcher is not None:
            result = self.batcher.run(servable, signature, inputs, deadline)
            return {k: result[k] for k in (outputs or result)}
        result = servable.run(signature, inputs, outputs)
        if deadline is not None and time.monotonic() > deadline:
            raise deadline_exceeded()
        return result

    def predict(self, servable: Servable, signature: Signature, inputs: dict[str, np.ndarray],
                output_filter: list[str] | None = None, timeout: float | None = None
                ) -> dict[str, np.ndarray]:
        output_filter = list(output_filter or [])
        check_predict_inputs(signature, inputs, output_filter)
        return self._run(servable, signature, inputs, output_filter or None, timeout)

    @staticmethod
    def _examples(examples: list[bytes]) -> np.ndarray:
        if not examples:
            raise invalid_argument("Input is empty.")
        tensor = np.empty(len(examples), dtype=object)
        tensor[:] = examples
        return tensor

    def classify(self, servable: Servable, signature: Signature, examples: list[bytes],
                 timeout: float | None = None) -> list[list[tuple[str, float]]]:
        """Serialized tf.Examples in; per example a list of (label, score)."""
        tensor = self._examples(examples)
        outputs = self._run(servable, signature, {CLASSIFY_INPUT: tensor}, timeout=timeout)
        return classification_results(outputs, len(examples))

    def regress(self, servable: Servable, signature: Signature, examples: list[bytes],
                timeout: float | None = None) -> list[float]:
        """Serialized tf.Examples in; one value per example (regressor.cc)."""
        tensor = self._examples(examples)
        outputs = self._run(servable, signature, {REGRESS_INPUT: tensor}, timeout=timeout)
        return regression_values(outputs[REGRESS_OUTPUT], len(examples))

    def multi_inference(self, servable: Servable, tasks: list[tuple[str, str]],
                        examples: list[bytes], timeout: float | None = None) -> list:
        """TensorFlowMultiInferenceRunner::Infer (multi_inference.cc): classify and regress
        tasks (method name, signature name) over the same Examples in one run; per task
        ("classify", results) or ("regress", values)."""
        signatures, seen, feeds, fetches = [], set(), set(), set()
        for method, name in tasks:
            name = name or SERVING_DEFAULT
            if name in seen:
                raise invalid_argument(f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            signature = servable.signature(name)
            if signature is None:
                raise invalid_argument(f"Requested signature not found in model graph: {name}")
            if method == CLASSIFY_METHOD:
                _classify_names(signature)
            elif method == REGRESS_METHOD:
                _regress_names(signature)
            else:
                raise unimplemented(f"Unsupported signature method_name: {method}")
            signatures.append((method, signature))
            feeds |= {info.name for info in signature.inputs.values()}
            fetches |= {info.name for info in signature.outputs.values()}
        tensor = self._examples(examples)
        # One run feeding the Examples to every input tensor the tasks name, fetching every
        # output they name: a signature of its own (and so a batching queue of its own, as
        # BatchingSession keys queues by tensor names).
        combined = meta_graph_pb2.SignatureDef()
        for i, name in enumerate(sorted(feeds)):
            combined.inputs[f"input{i}"].name = name
        for name in sorted(fetches):
            combined.outputs[name].name = name
        run = Signature("multi:" + ",".join(sorted(feeds)) + "->" + ",".join(sorted(fetches)),
                        combined)
        outputs = self._run(servable, run, {alias: tensor for alias in combined.inputs},
                            timeout=timeout)
        results = []
        for method, signature in signatures:
            mine = {alias: outputs[info.name] for alias, info in signature.outputs.items()}
            if method == CLASSIFY_METHOD:
                results.append(("classify", classification_results(mine, len(examples))))
            else:
                results.append(("regress", regression_values(mine[REGRESS_OUTPUT],
                                                             len(examples))))
        return results


def serialized_examples(request_input) -> list[bytes]:
    """tensorflow.serving.Input -> serialized Examples; context bytes are prepended to each
    example, exactly as TF Serving merges them (util.cc InputToSerializedExampleTensor)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        lists = request_input.example_list_with_context
        context = lists.context.SerializeToString()
        return [context + e.SerializeToString() for e in lists.examples]
    return []


def replay_warmup(servable: Servable, inference: Inference) -> int:
    """Replay assets.extra/tf_serving_warmup_requests; any failure fails the load."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(servable.path) / WARMUP_FILE
    if not path.exists():
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(str(path)):
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise invalid_argument(f"Number of warmup records exceeds the maximum "
                                   f"({MAX_WARMUP_RECORDS}) at {path}")
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            request = log.predict_log.request
            signature = predict_signature(servable, request.model_spec.signature_name, False)
            inputs = {alias: tensor_proto_to_ndarray(alias, proto)
                      for alias, proto in request.inputs.items()}
            inference.predict(servable, signature, inputs, list(request.output_filter))
        elif kind == "classify_log":
            request = log.classify_log.request
            signature = classify_signature(servable, request.model_spec.signature_name)
            inference.classify(servable, signature, serialized_examples(request.input))
        else:
            raise unimplemented(f"Unsupported log_type for warmup: {kind}")
    return count


# The most values one request tensor may declare: a batch of 64 images of 224x224x3 floats
# is 9.6 M. tf.make_ndarray allocates the declared shape first (a one-value TensorProto
# declaring [2**40] is a 30-byte request asking for terabytes), so the shape is checked
# before anything is allocated.
MAX_TENSOR_ELEMENTS = 64 * 1024 * 1024
# Fewer string_val entries than the shape declares: TensorFlow repeats the last one
# (tensor.cc, FromProtoField; TF Serving does the same), so one 1 MB string declared as
# [500] becomes 500 MB. The expanded size is checked first, in bytes.
MAX_EXPANDED_STRING_BYTES = 64 * 1024 * 1024


def tensor_proto_to_ndarray(alias: str, proto) -> np.ndarray:
    import tensorflow as tf

    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid_argument(f"tensor parsing error: {alias}")
    count = 1
    for d in dims:
        count *= d
    if count > MAX_TENSOR_ELEMENTS:
        raise invalid_argument(f"tensor {alias} declares {count} values, more than the "
                               f"development server's limit of {MAX_TENSOR_ELEMENTS}")
    values = proto.string_val
    if proto.dtype == types_pb2.DT_STRING and 0 < len(values) < count:
        expanded = sum(len(v) for v in values) + (count - len(values)) * len(values[-1])
        if expanded > MAX_EXPANDED_STRING_BYTES:
            raise invalid_argument(
                f"tensor {alias} declares {count} strings from {len(values)} values; "
                f"repeating the last one would make {expanded} bytes, more than the "
                f"development server's limit of {MAX_EXPANDED_STRING_BYTES}")
    try:
        array = tf.make_ndarray(proto)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise invalid_argument(f"tensor parsing error: {alias}") from e
    if proto.dtype == types_pb2.DT_STRING and array.dtype != object:
        array = array.astype(object)
    return array
