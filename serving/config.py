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
    message("BatchingParameters", [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, i64, one),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, i64, one),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, i64, one),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, i64, one),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, s, one),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, None, many),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, None, one),
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
        raise ConfigError(f"{what} {path}: {e}") from e


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's defaults (SharedBatchScheduler::QueueOptions) where the file is silent."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 4
    thread_pool_name: str = "model_server_batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()


def load_batching(path: str | Path | None, cpu_count: int) -> BatchingOptions:
    if path is None:
        return BatchingOptions(num_batch_threads=cpu_count)
    p = _parse(path, BatchingParameters, "batching parameters file")
    opts = BatchingOptions(
        max_batch_size=p.max_batch_size.value if p.HasField("max_batch_size") else 1000,
        batch_timeout_micros=p.batch_timeout_micros.value
        if p.HasField("batch_timeout_micros") else 0,
        max_enqueued_batches=p.max_enqueued_batches.value
        if p.HasField("max_enqueued_batches") else 10,
        num_batch_threads=p.num_batch_threads.value
        if p.HasField("num_batch_threads") else cpu_count,
        thread_pool_name=p.thread_pool_name.value if p.HasField("thread_pool_name")
        else "batch_threads",
        allowed_batch_sizes=tuple(p.allowed_batch_sizes),
    )
    if p.pad_variable_length_inputs:
        raise ConfigError(f"{path}: pad_variable_length_inputs is not supported by the "
                          "development server")
    sizes = opts.allowed_batch_sizes
    if sizes and (list(sizes) != sorted(set(sizes))):
        raise ConfigError(f"{path}: allowed_batch_sizes entries must be monotonically "
                          "increasing")
    if sizes and sizes[-1] != opts.max_batch_size:
        raise ConfigError(f"{path}: Last entry in allowed_batch_sizes must match "
                          "max_batch_size")
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(opts, name) < 1:
            raise ConfigError(f"{path}: {name} must be at least 1")
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
