"""Prometheus metrics under TF Serving's names, in TF Serving's exposition format.

prometheus_client does the (thread-safe) counting. The page is rendered the way TF Serving's
PrometheusExporter writes it (util/prometheus_exporter.cc): `# TYPE` lines, counters under
their own name (no `_total` suffix), histograms as `_bucket`/`_sum`/`_count`, no HELP lines.
So dashboards built for `tensorflow/serving` work against the development server unchanged.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


def _exponential(scale: float, growth: float, count: int) -> list[float]:
    """monitoring::Buckets::Exponential(scale, growth, count) limits."""
    return [scale * growth ** i for i in range(count - 1)]


REQUEST_LATENCY_BUCKETS = _exponential(10, 1.8, 33)  # microseconds, up to ~20 minutes
QUEUING_LATENCY_BUCKETS = _exponential(100, 1.2, 52)  # microseconds, up to ~1 second
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


class Metrics:
    def __init__(self) -> None:
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
        self.request_count.labels(model_name, status).inc()
        self.request_latency.labels(model_name, api, entrypoint).observe(seconds * 1e6)

    def batch_input(self, size: int) -> None:
        self.input_batch_size.observe(size)

    def batch_processed(self, padded: int, real: int, pool: str,
                        waits: list[float]) -> None:
        self.processed_batch_size.observe(padded)
        self.padding_size.labels(str(padded)).observe(padded - real)
        self.wrapped_run_count.inc()
        for wait in waits:
            self.queuing_latency.labels(pool).observe(wait * 1e6)

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
                lines += [f"{s.name}{_labels(s.labels)} {_number(s.value)}" for s in samples]
        return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return "{}"
    parts = []
    for k, v in labels.items():
        v = v.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'{k}="{v}"')
    return "{" + ",".join(parts) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
