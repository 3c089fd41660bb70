"""TF Serving's gRPC API (port 8500): PredictionService, ModelService and grpc.health.v1.

Servicers come from the `tensorflow-serving-api` stubs, so the wire format is exactly TF
Serving's. Status codes and messages follow the model server (reference section 2.3).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import defaults
from serving.defaults import SERVED_MODELS_KEY, is_loopback
from serving.devserver.errors import (
    PortUnavailable,
    ServingError,
    invalid_argument,
    unimplemented,
)
from serving.devserver.inference import (
    Inference,
    ModelRef,
    classify_signature,
    predict_signature,
    regress_signature,
    serialized_examples,
    tensor_proto_to_ndarray,
)
from serving.devserver.manager import ModelManager
from serving.devserver.metrics import Metrics
from serving.devserver.status import status_response
from serving.devserver.tensor_proto import ndarray_to_proto

log = logging.getLogger(__name__)
# The names TF Serving's health service knows (model_servers/server.cc, with
# --enable_grpc_healthcheck_service): "" and these two, unqualified. A probe naming
# "tensorflow.serving.PredictionService" gets NOT_FOUND from both servers.
HEALTH_SERVICES = ("", "ModelService", "PredictionService")
# TF Serving sets the server's message limit to INT32_MAX; the limit is the client's.
# TF Serving allows INT32_MAX; the development server takes what its REST side takes
# (--max-request-bytes, 64 MiB by default), so one message cannot exhaust its memory.


def _ref(request) -> ModelRef:
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    spec = request.model_spec
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return ModelRef(spec.name, version=spec.version.value)
    if choice == "version_label":
        return ModelRef(spec.name, label=spec.version_label)
    return ModelRef(spec.name)


def _fill_spec(response, servable, signature_name: str) -> None:
    response.model_spec.name = servable.model_name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name


def _add_classifications(result, classifications) -> None:
    """A ClassificationResult: per example, its (label, score)s."""
    for classes in classifications:
        entry = result.classifications.add()
        for label, score in classes:
            entry.classes.add(label=label, score=score)


def _add_regressions(result, values) -> None:
    for value in values:
        result.regressions.add(value=value)


class _Call:
    """Runs one RPC: ServingErrors abort with their code; metrics when `api` is given."""

    def __init__(self, metrics: Metrics, context, api: str | None, request,
                 manager: ModelManager | None = None):
        self.metrics, self.context, self.api, self.manager = metrics, context, api, manager
        has_spec = "model_spec" in request.DESCRIPTOR.fields_by_name and \
            request.HasField("model_spec")
        self.model = request.model_spec.name if has_spec else ""
        self.started = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, _tb):
        status = "OK" if error is None else getattr(error, "code_name", "UNKNOWN")
        if self.api:
            self.metrics.request(self.model, self.api, "GRPC", status,
                                 time.perf_counter() - self.started)
        if isinstance(error, ServingError):
            if error.code == grpc.StatusCode.NOT_FOUND and self.manager is not None and \
                    is_loopback(self.context.peer()):
                self.context.set_trailing_metadata(
                    ((SERVED_MODELS_KEY, ",".join(self.manager.served_models())),))
            self.context.abort(error.code, error.grpc_details())  # raises
        return False


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, inference: Inference, metrics: Metrics):
        self.manager, self.inference, self.metrics = manager, inference, metrics

    def Predict(self, request, context):
        with _Call(self.metrics, context, "Predict", request, self.manager):
            servable = self.manager.lookup(_ref(request))
            signature = predict_signature(servable, request.model_spec.signature_name,
                                          rest=False)
            inputs = {alias: tensor_proto_to_ndarray(alias, proto)
                      for alias, proto in request.inputs.items()}
            outputs = self.inference.predict(servable, signature, inputs,
                                             list(request.output_filter),
                                             timeout=context.time_remaining())
            response = predict_pb2.PredictResponse()
            _fill_spec(response, servable, signature.name)
            for alias, value in outputs.items():
                response.outputs[alias].CopyFrom(
                    ndarray_to_proto(value, signature.outputs[alias].dtype))
            return response

    def Classify(self, request, context):
        with _Call(self.metrics, context, "Classify", request, self.manager):
            servable = self.manager.lookup(_ref(request))
            signature = classify_signature(servable, request.model_spec.signature_name)
            results = self.inference.classify(servable, signature,
                                              serialized_examples(request.input),
                                              timeout=context.time_remaining())
            response = classification_pb2.ClassificationResponse()
            _fill_spec(response, servable, signature.name)
            _add_classifications(response.result, results)
            return response

    def GetModelMetadata(self, request, context):
        with _Call(self.metrics, context, None, request, self.manager):
            ref = _ref(request)
            if not request.metadata_field:
                raise invalid_argument("GetModelMetadataRequest must specify at least one "
                                       "metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise invalid_argument(f"Metadata field {field} is not supported")
            servable = self.manager.lookup(ref)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.model_name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(servable.signature_def_map())
            return response

    def Regress(self, request, context):
        with _Call(self.metrics, context, "Regress", request, self.manager):
            servable = self.manager.lookup(_ref(request))
            signature = regress_signature(servable, request.model_spec.signature_name)
            values = self.inference.regress(servable, signature,
                                            serialized_examples(request.input),
                                            timeout=context.time_remaining())
            response = regression_pb2.RegressionResponse()
            _fill_spec(response, servable, signature.name)
            _add_regressions(response.result, values)
            return response

    def MultiInference(self, request, context):
        """Every task on the one model the first task names (multi_inference_helper.cc,
        multi_inference.cc)."""
        with _Call(self.metrics, context, "MultiInference", request, self.manager):
            for task in request.tasks:
                if not task.model_spec.name:
                    raise invalid_argument("Found ModelSpec with an empty model name.")
            names = {task.model_spec.name for task in request.tasks}
            if len(names) > 1:
                raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access "
                                       "the same model name.")
            if not request.tasks:  # GetModelSpecFromRequest: an empty ModelSpec
                raise invalid_argument("ModelSpec has no name specified.")
            servable = self.manager.lookup(_ref(request.tasks[0]))
            results = self.inference.multi_inference(
                servable, [(t.method_name, t.model_spec.signature_name) for t in request.tasks],
                serialized_examples(request.input), timeout=context.time_remaining())
            response = inference_pb2.MultiInferenceResponse()
            for task, (kind, values) in zip(request.tasks, results, strict=True):
                result = response.results.add()
                _fill_spec(result, servable, task.model_spec.signature_name)
                if kind == "classify":
                    _add_classifications(result.classification_result, values)
                else:
                    _add_regressions(result.regression_result, values)
            return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager, metrics: Metrics):
        self.manager, self.metrics = manager, metrics

    def GetModelStatus(self, request, context):
        with _Call(self.metrics, context, None, request, self.manager):
            # An empty name is NOT_FOUND here, not INVALID_ARGUMENT as for Predict
            # (model_servers/get_model_status_impl.cc looks the name up as given).
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            return status_response(self.manager, spec.name, version)

    def HandleReloadConfigRequest(self, request, context):
        with _Call(self.metrics, context, None, request):
            raise unimplemented("HandleReloadConfigRequest is not implemented by the "
                                "development server: restart it with a new --model-config-file")


def build_server(manager: ModelManager, inference: Inference, metrics: Metrics, host: str,
                 port: int, threads: int, with_health: bool = True,
                 max_message_bytes: int = defaults.MAX_REQUEST_BYTES, socket_path: str = "",
                 channel_arguments: list | None = None
                 ) -> tuple[grpc.Server, health.HealthServicer | None, int]:
    server = grpc.server(ThreadPoolExecutor(threads, thread_name_prefix="grpc"), options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        *(channel_arguments or []),
    ])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, inference, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager, metrics),
                                                              server)
    health_servicer = None
    if with_health:
        health_servicer = health.HealthServicer()
        for service in HEALTH_SERVICES:
            health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:  # newer grpcio raises instead of returning 0
        raise PortUnavailable("gRPC", host, port) from e
    if bound == 0:
        raise PortUnavailable("gRPC", host, port)
    if socket_path:  # main.cc: AddListeningPort("unix:" + grpc_socket_path, ...)
        try:
            listening = server.add_insecure_port(f"unix:{socket_path}")
        except RuntimeError:
            listening = 0
        if listening == 0:
            raise OSError(f"cannot listen on the gRPC socket {socket_path} (--grpc-socket-path)"
                          ": its folder must exist and be writable")
    return server, health_servicer, bound
