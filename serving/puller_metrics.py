"""The puller's own Prometheus metrics (`serving pull --watch --metrics-port N`): what an
operator alerts on when serving falls behind the store (k8s/components/monitoring).

prometheus_client counts and serves them, on a registry of their own, over HTTP at
`/metrics` on the port given.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

# Why a version was refused, as a small fixed set (the full reason is in the log line).
REJECTION_KINDS = (("signature:", "signature"), ("identity:", "identity"),
                   ("invalid manifest", "manifest"), ("manifest is for model", "manifest"),
                   ("does not match its sha256", "checksum"), ("bytes", "size"),
                   ("MiB", "size"), ("deleted from the store", "deleted"))


def rejection_kind(reason: str) -> str:
    return next((kind for text, kind in REJECTION_KINDS if text in reason), "other")


class PullerMetrics:
    def __init__(self, model: str):
        self.registry = CollectorRegistry()
        self.model = model
        labels = ["model"]
        self.syncs = Counter("vgg16_puller_syncs", "Syncs with the store, by outcome.",
                             [*labels, "outcome"], registry=self.registry)
        self.installs = Counter("vgg16_puller_installs", "Versions installed.", labels,
                                registry=self.registry)
        self.rejections = Counter("vgg16_puller_rejections",
                                  "Versions refused, by kind of reason.", [*labels, "kind"],
                                  registry=self.registry)
        self.last_success = Gauge("vgg16_puller_last_successful_sync_timestamp_seconds",
                                  "When a sync last succeeded (Unix time).", labels,
                                  registry=self.registry)
        self.newest_published = Gauge("vgg16_puller_newest_published_version",
                                      "The newest version with a manifest in the store.",
                                      labels, registry=self.registry)
        self.newest_local = Gauge("vgg16_puller_newest_local_version",
                                  "The newest version installed for the server.", labels,
                                  registry=self.registry)
        self.local_versions = Gauge("vgg16_puller_local_versions",
                                    "How many versions are installed.", labels,
                                    registry=self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def synced(self, result, newest_published: int | None) -> None:
        m = self.model
        self.syncs.labels(m, "ok").inc()
        self.installs.labels(m).inc(len(result.installed))
        for reason in result.new_rejections:
            self.rejections.labels(m, rejection_kind(reason)).inc()
        self.last_success.labels(m).set(time.time())
        if newest_published is not None:
            self.newest_published.labels(m).set(newest_published)
        self.newest_local.labels(m).set(max(result.local, default=0))
        self.local_versions.labels(m).set(len(result.local))

    def failed(self) -> None:
        self.syncs.labels(self.model, "failed").inc()
