"""TF Serving's configuration files, in TF Serving's own text-proto formats.

- models.config: `ModelServerConfig` (tensorflow_serving/config/model_server_config.proto),
  parsed with the class shipped in `tensorflow-serving-api`.
- batching.config: `BatchingParameters` (servables/tensorflow/session_bundle_config.proto)
- monitoring.config: `MonitoringConfig` (config/monitoring_config.proto)

The wheel does not ship the last two, so their schemas are declared here with the same
package, names and field numbers as upstream; protobuf's own text-format parser reads them,
so a file TF Serving accepts is accepted here and vice versa.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
log = logging.getLogger(__name__)

_F = descriptor_pb2.FieldDescriptorProto


def _schema_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="vgg16_transfer/tf_serving_configs.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])

    def message(name: str, fields: list[tuple[str, int, int, str | None, int]]) -> None:
        msg = fdp.message_type.add(name=name)
        for field_name, number, kind, type_name, label in fields:
            f = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = type_name

    one, many = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    i64, s = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    b = ".google.protobuf.BoolValue"
    message("BatchingParameters", [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, i64, one),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, i64, one),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, i64, one),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, i64, one),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, s, one),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, None, many),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, None, one),
        ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, b, one),
        ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, i64, one),
    ])
    message("PrometheusConfig", [
        ("enable", 1, _F.TYPE_BOOL, None, one),
        ("path", 2, _F.TYPE_STRING, None, one),
    ])
    message("MonitoringConfig", [
        ("prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig", one),
    ])
    return fdp


_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
_pool.Add(_schema_file())
BatchingParameters = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
MonitoringConfig = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig


class ConfigError(ValueError):
    """A configuration file that does not parse or does not make sense."""


def _parse(path: str | Path, message_class, what: str):
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as e:
        # TF Serving's line for the same file (protobuf's TextFormat parser, through
        # ParseProtoTextFile in model_servers/server.cc), then where it is.
        raise ConfigError(f"Error parsing text-format {message_class.DESCRIPTOR.full_name}: "
                          f"{e} ({what} {path})") from e


# Where the file is silent, TF Serving's defaults (SharedBatchScheduler::QueueOptions;
# num_batch_threads: the machine's parallelism).
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_THREAD_POOL_NAME = "batch_threads"
# Accepted, as TF Serving accepts them, but not implemented by the development server.
IGNORED_BATCHING_FIELDS = {
    "pad_variable_length_inputs": "requests whose tensors differ in shape are refused "
                                  "(FAILED_PRECONDITION) instead of padded",
}


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = 1
    thread_pool_name: str = DEFAULT_THREAD_POOL_NAME
    allowed_batch_sizes: tuple[int, ...] = ()
    # TF Serving's large batch splitting (bundle_factory_util.h, GetQueueOptions): a request
    # of up to max_batch_size items is split across batches of at most
    # max_execution_batch_size; without it the two are the same.
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # 0: max_batch_size

    @property
    def execution_limit(self) -> int:
        """The largest batch run: max_execution_batch_size with splitting, else
        max_batch_size."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size


def load_batching(path: str | Path | None, cpu_count: int) -> BatchingOptions:
    """TF Serving's BatchingParameters; every field is honoured or logged as ignored."""
    if path is None:
        return BatchingOptions(num_batch_threads=cpu_count)
    p = _parse(path, BatchingParameters, "batching parameters file")

    def value(name: str, default):
        return getattr(p, name).value if p.HasField(name) else default

    opts = BatchingOptions(
        max_batch_size=value("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
        batch_timeout_micros=value("batch_timeout_micros", DEFAULT_BATCH_TIMEOUT_MICROS),
        max_enqueued_batches=value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES),
        num_batch_threads=value("num_batch_threads", cpu_count),
        thread_pool_name=value("thread_pool_name", DEFAULT_THREAD_POOL_NAME),
        allowed_batch_sizes=tuple(p.allowed_batch_sizes),
        enable_large_batch_splitting=value("enable_large_batch_splitting", False),
        max_execution_batch_size=value("max_execution_batch_size", 0),
    )
    for name, effect in IGNORED_BATCHING_FIELDS.items():
        if p.ListFields() and any(f.name == name for f, _ in p.ListFields()):
            log.warning("%s: %s is accepted but ignored by the development server: %s",
                        path, name, effect)
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(opts, name) < 1:
            raise ConfigError(f"{path}: {name} must be at least 1")
    splitting = opts.enable_large_batch_splitting
    if splitting and opts.max_batch_size < opts.execution_limit:
        # shared_batch_scheduler.h, AddQueueAfterRewritingOptions
        raise ConfigError(f"{path}: When enable_large_batch_splitting is true, "
                          "input_batch_size_limit must be greater than or equal to "
                          "max_execution_batch_size.")
    # batching_session.cc, CreateBasicBatchingSession
    sizes = opts.allowed_batch_sizes
    if sizes and list(sizes) != sorted(set(sizes)):
        raise ConfigError(f"{path}: allowed_batch_sizes entries must be monotonically "
                          "increasing")
    if sizes and splitting and sizes[-1] > opts.max_batch_size:
        raise ConfigError(f"{path}: Last entry in allowed_batch_sizes must be less than or "
                          f"equal to max_batch_size; last entry was {sizes[-1]}; expected "
                          f"{opts.max_batch_size}")
    if sizes and splitting and sizes[-1] != opts.execution_limit:
        raise ConfigError(f"{path}: Last entry in allowed_batch_sizes must be equal to "
                          f"max_execution_batch_size; last entry was {sizes[-1]}; expected "
                          f"{opts.execution_limit}")
    if sizes and not splitting and sizes[-1] != opts.max_batch_size:
        raise ConfigError(f"{path}: Last entry in allowed_batch_sizes must match "
                          f"max_batch_size; last entry was {sizes[-1]}; expected "
                          f"{opts.max_batch_size}")
    return opts


def load_monitoring(path: str | Path | None) -> str | None:
    """The Prometheus path to serve, or None when metrics are off."""
    if path is None:
        return None
    config = _parse(path, MonitoringConfig, "monitoring config file")
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    return prometheus.path or DEFAULT_PROMETHEUS_PATH


def load_models(path: str | Path) -> list:
    """The ModelConfigs of a ModelServerConfig file (model_config_list only, as TF Serving)."""
    config = _parse(path, ModelServerConfig, "model config file")
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError(f"{path}: only model_config_list is supported")
    models = list(config.model_config_list.config)
    names = [m.name for m in models]
    for m in models:
        for field, _ in m.ListFields():
            if field.name in ("logging_config", "model_type"):
                log.warning("%s: model %r: %s is accepted but ignored by the development "
                            "server", path, m.name, field.name)
        if not m.name:
            raise ConfigError(f"{path}: every model needs a name")
        if not m.base_path:
            raise ConfigError(f"{path}: model {m.name!r} has no base_path")
        if m.model_platform and m.model_platform != "tensorflow":
            raise ConfigError(f"{path}: model {m.name!r}: platform {m.model_platform!r} is "
                              "not supported (only 'tensorflow')")
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ConfigError(f"{path}: model names must be unique, repeated: "
                          f"{', '.join(sorted(duplicates))}")
    if not models:
        raise ConfigError(f"{path}: no models configured")
    return models


def single_model(name: str, base_path: str):
    """What --model_name/--model_base_path mean: one model, latest version."""
    return ModelConfig(name=name, base_path=base_path, model_platform="tensorflow")


def channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """--grpc_channel_arguments, as main.cc reads it: comma-separated key=value pairs, a
    value that parses as an integer passed as one."""
    found = []
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--grpc_channel_arguments: {pair!r} is not key=value")
        found.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return found
