"""The opt-in monitoring component (issue 29): what it scrapes, who may scrape, and its alert
rules, checked and unit-tested with promtool on synthetic series. promtool comes from
Debian's `prometheus` package (`.ci/run` installs it); without it those tests skip, saying
so."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.k8s.test_manifests import (
    KUBERNETES_VERSIONS,
    one,
    pod_template,
    render_with_components,
)

COMPONENT = Path(__file__).resolve().parents[2] / "k8s" / "components" / "monitoring"


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> list[dict]:
    return render_with_components(tmp_path_factory.mktemp("monitoring"), "gpu", ["monitoring"])


def promtool() -> str:
    beside = Path(sys.executable).parent / "promtool"  # where .ci/run puts it
    found = str(beside) if beside.exists() else shutil.which("promtool")
    if found is None:
        pytest.skip("no promtool here (Debian's `prometheus` package has it; .ci/run "
                    "installs it)")
    return found


def rules_file(docs, tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": one(docs, "PrometheusRule",
                                                  "vgg16-transfer")["spec"]["groups"]}))
    return path


def test_it_scrapes_tf_serving_and_the_puller_and_lets_only_the_scraper_in(docs):
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # the operator's CRDs: not in Kubernetes' own schema
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    spec = pod_template(one(docs, "Deployment", "serving"))["spec"]
    [sidecar] = [c for c in spec["initContainers"] if c["name"] == "model-puller"]
    assert {"name": "PULL_METRICS_PORT", "value": "9102"} in sidecar["env"]
    ports = {p["name"] for c in spec["initContainers"] + spec["containers"]
             for p in c.get("ports", [])}
    monitor = one(docs, "PodMonitor", "serving")["spec"]
    assert {e["port"] for e in monitor["podMetricsEndpoints"]} <= ports
    assert {"port": "http", "path": "/monitoring/prometheus/metrics", "interval": "30s"} in \
        monitor["podMetricsEndpoints"]  # serving/config/monitoring.config's path
    [rule] = one(docs, "NetworkPolicy", "serving-metrics")["spec"]["ingress"]
    assert sorted(p["port"] for p in rule["ports"]) == [8501, 9102]  # never 8500
    dashboard = one(docs, "ConfigMap", "vgg16-transfer-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["dashboard.json"])["panels"]


def test_the_rules_and_the_dashboards_queries_are_valid_promql(docs, tmp_path):
    tool = promtool()
    proc = subprocess.run([tool, "check", "rules", str(rules_file(docs, tmp_path))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    panels = json.loads((COMPONENT / "dashboard.json").read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    recorded = tmp_path / "dashboard-queries.yaml"
    recorded.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    proc = subprocess.run([tool, "check", "rules", str(recorded)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_alerts_fire_on_synthetic_series(docs, tmp_path):
    """promtool's rule unit tests: each alert fires on the series that should fire it and
    stays quiet on healthy ones."""
    tool = promtool()
    rules = rules_file(docs, tmp_path)
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": [
            # A newer version published at minute 0 that never reaches the servers.
            {"series": 'vgg16_puller_newest_published_version{model="classifier"}',
             "values": "7x45"},
            {"series": 'vgg16_puller_newest_local_version{model="classifier"}',
             "values": "6x45"},
            # One rejection at minute 10.
            {"series": 'vgg16_puller_rejections_total{model="classifier",kind="signature"}',
             "values": "0x9 1x35"},
            # The last successful sync at time 0, never again.
            {"series": 'vgg16_puller_last_successful_sync_timestamp_seconds'
                       '{model="classifier"}', "values": "0x45"},
            # 10% of requests fail.
            {"series": ':tensorflow:serving:request_count{model_name="classifier",'
                       'status="OK"}', "values": "0+90x45"},
            {"series": ':tensorflow:serving:request_count{model_name="classifier",'
                       'status="INVALID_ARGUMENT"}', "values": "0+10x45"},
            {"series": 'kube_job_status_failed{namespace="vgg16-transfer",'
                       'job_name="train-20261206"}', "values": "0x4 1x40"},
            {"series": 'kube_deployment_status_replicas_available{namespace="vgg16-transfer",'
                       'deployment="serving"}', "values": "2x45"}],
         "alert_rule_test": [
             {"eval_time": "20m", "alertname": "VGG16ServedVersionBehindPublished",
              "exp_alerts": []},  # not yet: 30 minutes
             {"eval_time": "40m", "alertname": "VGG16ServedVersionBehindPublished",
              "exp_alerts": [{"exp_labels": {"severity": "warning", "model": "classifier"},
                              "exp_annotations": {"summary": (
                                  "A newer published version of classifier has not reached "
                                  "the servers for 30 minutes (without labels, the newest is "
                                  "served; with labels, ignore unless you meant to serve "
                                  "it).")}}]},
             {"eval_time": "15m", "alertname": "VGG16PullerRejectingVersions",
              "exp_alerts": [{"exp_labels": {"severity": "warning", "model": "classifier"},
                              "exp_annotations": {"summary": (
                                  "The puller refused a version of classifier in the last 30 "
                                  "minutes (see its log for why).")}}]},
             {"eval_time": "20m", "alertname": "VGG16PullerNotSyncing",
              "exp_alerts": [{"exp_labels": {"severity": "warning", "model": "classifier"},
                              "exp_annotations": {"summary": (
                                  "No successful sync with the store for classifier in 15 "
                                  "minutes.")}}]},
             {"eval_time": "20m", "alertname": "VGG16RequestErrorRate",
              "exp_alerts": [{"exp_labels": {"severity": "warning",
                                             "model_name": "classifier"},
                              "exp_annotations": {"summary": (
                                  "More than 5% of requests to classifier fail.")}}]},
             {"eval_time": "10m", "alertname": "VGG16TrainingRunFailed",
              "exp_alerts": [{"exp_labels": {"severity": "warning",
                                             "namespace": "vgg16-transfer",
                                             "job_name": "train-20261206"},
                              "exp_annotations": {"summary": (
                                  "Training run train-20261206 failed; nothing was published "
                                  "(kubectl logs job/train-20261206).")}}]},
             {"eval_time": "20m", "alertname": "VGG16ServingNoPodAvailable",
              "exp_alerts": []},  # two pods available: quiet
         ]}]}
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests))
    proc = subprocess.run([tool, "test", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
