"""Kubernetes manifests: rendered with `kubectl kustomize`, validated strictly against the
Kubernetes schema, and held to the project's policies."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml

from serving.cli import cli as serving_cli
from trainer.cli import cli as trainer_cli

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.37.0"
OVERLAYS = ["gpu", "local"]
WORKLOADS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}
# Flags of tensorflow_model_server (model_servers/main.cc) this project may pass.
TF_SERVING_FLAGS = {
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads",
    "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "model_name", "model_base_path",
    "model_config_file", "model_config_file_poll_wait_seconds", "file_system_poll_wait_seconds",
    "allow_version_labels_for_unavailable_models", "enable_batching",
    "batching_parameters_file", "enable_per_model_batching_parameters", "num_load_threads",
    "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros",
    "flush_filesystem_caches", "saved_model_tags", "enable_model_warmup",
    "num_request_iterations_for_warmup", "monitoring_config_file",
    "enable_signature_method_name_check", "enable_grpc_healthcheck_service",
    "enable_serialization_as_tensor_content", "grpc_channel_arguments", "grpc_max_threads",
    "ssl_config_file", "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "per_process_gpu_memory_fraction",
    "platform_config_file", "enable_profiler", "xla_cpu_compilation_enabled",
}


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def render(path: str) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", str(REPO / path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request) -> list[dict]:
    return render(f"k8s/overlays/{request.param}")


@pytest.fixture(scope="module")
def gpu() -> list[dict]:
    return render("k8s/overlays/gpu")


@pytest.fixture(scope="module")
def local() -> list[dict]:
    return render("k8s/overlays/local")


def pod_specs(docs: list[dict]):
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d, d["spec"]["template"]["spec"]


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def one(docs, kind, name) -> dict:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    return found


@pytest.mark.parametrize("path", ["k8s/base", "k8s/overlays/gpu", "k8s/overlays/local"])
def test_every_object_validates_strictly(path):
    rendered = render(path)
    assert rendered
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_does_reject_unknown_fields(gpu):
    deployment = one(gpu, "Deployment", "serving")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_container_is_pinned_resourced_and_hardened(docs):
    for workload, spec in pod_specs(docs):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, where
        for c in containers(spec):
            name = f"{where}/{c['name']}"
            image, _, tag = c["image"].rpartition(":")
            assert image and tag and tag != "latest" and "/" not in tag, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), name
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, name
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
            assert seccomp == {"type": "RuntimeDefault"}, name
            # Writable paths are explicit emptyDirs (or the store's volume).
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for mount in c.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                assert {"emptyDir", "configMap", "persistentVolumeClaim"} & set(volume), name


def test_every_object_has_app_kubernetes_io_labels(docs):
    for d in docs:
        labels = d["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "vgg16-transfer", d["metadata"]
        assert "app.kubernetes.io/name" in labels, d["metadata"]
    for workload, _ in pod_specs(docs):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert "app.kubernetes.io/name" in pod_labels


def test_everything_lives_in_the_project_namespace(docs):
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "vgg16-transfer", d["metadata"]


def test_service_accounts_do_not_mount_tokens(docs):
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert {a["metadata"]["name"] for a in accounts} == {"trainer", "serving"}
    assert all(a["automountServiceAccountToken"] is False for a in accounts)


def _pods_for(docs, selector: dict):
    for workload, spec in pod_specs(docs):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if all(labels.get(k) == v for k, v in selector.items()):
            yield spec


def test_service_ports_match_container_ports(docs):
    for service in (d for d in docs if d["kind"] == "Service"):
        specs = list(_pods_for(docs, service["spec"]["selector"]))
        assert specs, f"Service {service['metadata']['name']} selects no pods"
        for spec in specs:
            ports = [p for c in spec["containers"] for p in c.get("ports", [])]
            for port in service["spec"]["ports"]:
                target = port["targetPort"]
                assert any(p["containerPort"] == target or p.get("name") == target
                           for p in ports), (service["metadata"]["name"], target)
    service = one(docs, "Service", "serving")
    assert {(p["name"], p["port"], p.get("appProtocol")) for p in service["spec"]["ports"]} \
        == {("grpc", 8500, "grpc"), ("http", 8501, "http")}
    assert service["spec"]["type"] == "ClusterIP"


def test_probes_point_at_ports_the_container_opens(docs):
    for _, spec in pod_specs(docs):
        for c in containers(spec):
            opened = {p["containerPort"] for p in c.get("ports", [])} | \
                     {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe not in c:
                    continue
                action = next(v for k, v in c[probe].items() if k in ("httpGet", "grpc",
                                                                      "tcpSocket"))
                assert action["port"] in opened, (c["name"], probe, action["port"])
                assert "timeoutSeconds" in c[probe], (c["name"], probe)
    tfserving = next(c for _, s in pod_specs(docs) for c in s["containers"]
                     if c["name"] == "tfserving")
    assert tfserving["readinessProbe"]["httpGet"]["path"] == "/v1/models/classifier"
    assert tfserving["livenessProbe"] != tfserving["readinessProbe"]


def _env(docs, container: dict) -> dict[str, str]:
    """The environment a container gets: envFrom ConfigMaps plus env entries."""
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(one(docs, "ConfigMap", name)["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from secret or field>")
    return env


def _required_envvars(command: click.Command) -> set[str]:
    return {p.envvar for p in command.params
            if isinstance(p, click.Option) and p.required and p.envvar}


def test_every_env_var_the_code_reads_is_provided(docs):
    credentials = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for workload, spec in pod_specs(docs):
        for c in containers(spec):
            if "seaweedfs" in c["image"]:
                continue
            env = _env(docs, c)
            args = c.get("args", [])
            if "trainer" in c["image"]:
                command = trainer_cli.commands[args[0]]
            else:
                command = serving_cli.commands[args[0]] if "puller" in c["image"] else None
            if command is None:
                continue
            given = {a.split("=")[0] for a in args if a.startswith("--")}
            for param in command.params:
                if isinstance(param, click.Option) and param.required and not \
                        (set(param.opts) & given):
                    assert param.envvar in env, (workload["metadata"]["name"], c["name"],
                                                 param.envvar)
            assert credentials <= set(env), c["name"]
            assert env.get("AWS_REGION") and env.get("AWS_DEFAULT_REGION")
    # The in-cluster store of the local overlay is the endpoint there.
    if any(d["kind"] == "Deployment" and d["metadata"]["name"] == "seaweedfs" for d in docs):
        assert one(docs, "ConfigMap", "storage")["data"]["AWS_ENDPOINT_URL"] == \
            "http://seaweedfs:8333"


def test_container_args_are_flags_the_programs_accept(docs):
    for _, spec in pod_specs(docs):
        for c in containers(spec):
            args = [a.replace("$(DATA_URI)", "s3://b/d") for a in c.get("args", [])]
            if "tfserving" in c["image"]:
                assert c["command"] == ["/usr/bin/tensorflow_model_server"]
                for arg in args:
                    flag, _, value = arg.removeprefix("--").partition("=")
                    assert flag in TF_SERVING_FLAGS and value, arg
            elif "trainer" in c["image"] or "puller" in c["image"]:
                group = trainer_cli if "trainer" in c["image"] else serving_cli
                env = {k: "x" for k in _env(docs, c)}
                command = group.commands[args[0]]
                with pytest.MonkeyPatch.context() as mp:
                    for k in env:
                        mp.setenv(k, "s3://bucket/x" if k.endswith(("URI", "SOURCE")) else "x")
                    mp.setenv("MODEL_NAME", "classifier")
                    mp.setenv("MIN_VAL_ACCURACY", "0.0")
                    command.make_context(args[0], args[1:])  # raises on an unknown flag
            elif "seaweedfs" in c["image"]:
                assert c["args"][0] == "mini", shlex.join(c["args"])


def test_tfserving_reads_the_projects_own_config_files(docs):
    config = one(docs, "ConfigMap", "tfserving-config")
    for name in ("models.config", "batching.config", "monitoring.config"):
        assert config["data"][name] == (REPO / "serving" / "config" / name).read_text()
    deployment = one(docs, "Deployment", "serving")
    [tfserving] = deployment["spec"]["template"]["spec"]["containers"]
    assert "--model_config_file=/etc/tfserving/models.config" in tfserving["args"]
    models_mount = next(m for m in tfserving["volumeMounts"] if m["name"] == "models")
    puller_env = _env(docs, deployment["spec"]["template"]["spec"]["initContainers"][0])
    # models.config's base path is where the puller writes, inside TF Serving's mount.
    assert "base_path: \"/models/classifier\"" in config["data"]["models.config"]
    assert puller_env["MODEL_DEST"] == "/models/classifier"
    assert puller_env["MODEL_DEST"].startswith(models_mount["mountPath"])
    assert puller_env["MODEL_SOURCE"].endswith("/classifier")
    assert one(docs, "ConfigMap", "storage")["data"]["MODEL_NAME"] == "classifier"


def test_serving_puller_runs_as_init_container_and_native_sidecar(docs):
    spec = one(docs, "Deployment", "serving")["spec"]
    init = spec["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["model-sync", "model-puller"]
    assert "restartPolicy" not in init[0] and "--watch" not in init[0]["args"]
    assert init[1]["restartPolicy"] == "Always" and "--watch" in init[1]["args"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = one(docs, "HorizontalPodAutoscaler", "serving")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "serving"}
    pdb = one(docs, "PodDisruptionBudget", "serving")
    assert list(_pods_for(docs, pdb["spec"]["selector"]["matchLabels"]))


def test_network_policies_admit_only_the_serving_ports(docs):
    policy = one(docs, "NetworkPolicy", "serving")
    [rule] = policy["spec"]["ingress"]
    assert sorted(p["port"] for p in rule["ports"]) == [8500, 8501]
    egress_ports = {p["port"] for r in policy["spec"]["egress"] for p in r["ports"]}
    assert egress_ports == {53, 443}
    trainer = one(docs, "NetworkPolicy", "trainer")
    assert trainer["spec"]["ingress"] == []


def test_training_job_limits_and_retries(docs):
    job = one(docs, "Job", "trainer")["spec"]
    assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] > 0
    assert job["ttlSecondsAfterFinished"] > 0
    [c] = job["template"]["spec"]["containers"]
    assert c["args"] == ["train"]
    rules = job["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                 "values": [1, 2]}} in rules


def test_gpu_overlay_trains_on_gpu_nodes(gpu):
    spec = one(gpu, "Job", "trainer")["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["image"].endswith(":0.1.0-gpu")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        spec["tolerations"]


def test_local_overlay_brings_its_store_credentials_and_data(local):
    store = one(local, "Deployment", "seaweedfs")
    assert one(local, "PersistentVolumeClaim", "seaweedfs")
    assert one(local, "Service", "seaweedfs")
    assert one(local, "Secret", "s3-credentials")["type"] == "Opaque"
    assert "-bucket=datasets,models,cache" in store["spec"]["template"]["spec"][
        "containers"][0]["args"]
    sample = one(local, "Job", "sample-data")
    assert sample["spec"]["template"]["spec"]["containers"][0]["args"][0] == "sample-data"
    assert one(local, "Job", "trainer")["spec"]["suspend"] is True  # resumed after the data
    trainer = one(local, "Job", "trainer")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in trainer["resources"]["limits"]
    assert trainer["image"].endswith(":0.1.0")
