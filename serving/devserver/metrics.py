"""Prometheus metrics under TF Serving's names, in TF Serving's exposition format.

prometheus_client does the (thread-safe) counting. The page is rendered the way TF Serving's
PrometheusExporter writes it (util/prometheus_exporter.cc): `# TYPE` lines, counters under
their own name (no `_total` suffix), histograms as `_bucket`/`_sum`/`_count`, no HELP lines.
So dashboards built for `tensorflow/serving` work against the development server unchanged.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram


def _tf_bucket(value: float) -> float:
    """TF's histogram counts a value in the first bucket whose limit is *greater* than it
    (std::upper_bound); Prometheus' client in the first whose limit is greater or equal.
    Nudging the value up by one ulp makes a value equal to a limit (a batch of exactly 8)
    land where TF Serving puts it."""
    return math.nextafter(value, math.inf)


def _exponential(scale: float, growth: float, count: int) -> list[float]:
    """monitoring::Buckets::Exponential(scale, growth, count): `count` finite limits
    (tsl/lib/monitoring/sampler.cc); the histogram adds DBL_MAX, rendered as +Inf."""
    return [scale * growth ** i for i in range(count)]


# The buckets TF Serving 2.20 declares for each metric:
REQUEST_LATENCY_BUCKETS = _exponential(10, 1.8, 33)  # µs; servables/tensorflow/util.cc
QUEUING_LATENCY_BUCKETS = _exponential(100, 1.2, 52)  # µs; batching/batching_session.cc
BATCH_SIZE_BUCKETS = _exponential(1, 2, 14)  # 1..8192; batching/batching_util.h


UNKNOWN_MODEL_LABEL = "<unknown model>"


class Metrics:
    def __init__(self, known_models: set[str] | None = None) -> None:
        self.known_models = known_models
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_count = Counter(
            ":tensorflow:serving:request_count", "The total number of requests.",
            ["model_name", "status"], registry=r)
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"], buckets=REQUEST_LATENCY_BUCKETS, registry=r)
        self.input_batch_size = Histogram(
            ":tensorflow:serving:batching_session:input_batch_size",
            "Tracks the batch size distribution on the inputs.", [],
            buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.processed_batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Tracks the batch size distribution on processing.", [],
            buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.padding_size = Histogram(
            ":tensorflow:serving:batching_session:padding_size",
            "Tracks the padding size distribution on batches.", ["execution_batch_size"],
            buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.queuing_latency = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            ["thread_pool_name"], buckets=QUEUING_LATENCY_BUCKETS, registry=r)
        self.wrapped_run_count = Counter(
            ":tensorflow:serving:batching_session:wrapped_run_count",
            "Total count of run calls on the wrapped session.", [], registry=r)

    def request(self, model_name: str, api: str, entrypoint: str, status: str,
                seconds: float) -> None:
        model_name = self._label(model_name)
        """A request: counted with its status; its latency only when it succeeded (TF
        Serving records latency for OK responses only: http_server.cc, and the gRPC
        PredictionServiceImpl)."""
        self.request_count.labels(model_name, status).inc()
        if status == "OK":
            self.request_latency.labels(model_name, api, entrypoint).observe(
                _tf_bucket(seconds * 1e6))

    def request_count_only(self, model_name: str, status: str) -> None:
        self.request_count.labels(self._label(model_name), status).inc()

    def _label(self, model_name: str) -> str:
        """Requests for models this server does not have are counted under one label
        value: every new name would otherwise add a metric series for ever (TF Serving
        uses the requested name)."""
        if self.known_models is None or model_name in self.known_models:
            return model_name
        return UNKNOWN_MODEL_LABEL

    def batch_input(self, size: int) -> None:
        self.input_batch_size.observe(_tf_bucket(size))

    def batch_processed(self, padded: int, real: int, pool: str,
                        waits: list[float]) -> None:
        self.processed_batch_size.observe(_tf_bucket(padded))
        self.padding_size.labels(str(padded)).observe(_tf_bucket(padded - real))
        self.wrapped_run_count.inc()
        for wait in waits:
            self.queuing_latency.labels(pool).observe(_tf_bucket(wait * 1e6))

    def render(self) -> str:
        """The page TF Serving's PrometheusExporter would write."""
        lines = []
        for family in self.registry.collect():
            samples = [s for s in family.samples if not s.name.endswith("_created")]
            if family.type == "counter":
                if not samples:
                    continue
                lines.append(f"# TYPE {family.name} counter")
                lines += [f"{family.name}{_labels(s.labels)} {int(s.value)}" for s in samples]
            elif family.type == "histogram":
                if not any(s.name.endswith("_count") for s in samples):
                    continue
                lines.append(f"# TYPE {family.name} histogram")
                lines += [_histogram_line(s) for s in _sum_before_count(samples)]
        return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return "{}"
    parts = []
    for k, v in labels.items():
        v = v.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'{k}="{v}"')
    return "{" + ",".join(parts) + "}"


def _six_digits(value: float) -> str:
    """absl::StrCat(double): six significant digits, as TF Serving's exporter prints bucket
    limits and sums (util/prometheus_exporter.cc)."""
    return f"{value:.6g}"


def _sum_before_count(samples: list) -> list:
    """TF Serving writes each label set's buckets, then _sum, then _count."""
    ordered = list(samples)
    for i in range(len(ordered) - 1):
        if ordered[i].name.endswith("_count") and ordered[i + 1].name.endswith("_sum"):
            ordered[i], ordered[i + 1] = ordered[i + 1], ordered[i]
    return ordered


def _histogram_line(sample) -> str:
    labels = dict(sample.labels)
    if sample.name.endswith("_bucket"):
        le = labels.pop("le")
        labels["le"] = le if le == "+Inf" else _six_digits(float(le))
        return f"{sample.name}{_labels(labels)} {int(sample.value)}"
    if sample.name.endswith("_sum"):
        return f"{sample.name}{_labels(labels)} {_six_digits(sample.value)}"
    return f"{sample.name}{_labels(labels)} {int(sample.value)}"
