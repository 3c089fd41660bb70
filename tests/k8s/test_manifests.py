"""Kubernetes manifests: rendered with `kubectl kustomize`, validated strictly against the
Kubernetes schema, and held to the project's policies."""

from __future__ import annotations

import os
import re
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
from serving.devserver import config as serving_config
from serving.devserver.flags import TF_SERVING_FLAGS
from trainer.cli import cli as trainer_cli

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.37.0"
# The newest schema, and 1.33, the oldest release still widely deployed: fields newer than it
# (or that it validates more strictly) would break apply there.
KUBERNETES_VERSIONS = ["1.33.0", KUBERNETES_VERSION]
OVERLAYS = ["gpu", "local"]
WORKLOADS = {"Deployment", "Job", "CronJob", "StatefulSet", "DaemonSet"}
COMPONENTS = ["egress-instance-metadata", "egress-pod-identity", "egress-store-port"]


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def render(path: str | Path) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", "--load-restrictor=LoadRestrictionsNone",
                           str(REPO / path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_with_components(tmp_path: Path, overlay: str, components: list[str]) -> list[dict]:
    """An overlay plus opt-in components, the way a user's kustomization would add them."""
    def rel(p: Path) -> str:
        return os.path.relpath(p, tmp_path)

    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [rel(REPO / "k8s" / "overlays" / overlay)],
        "components": [rel(REPO / "k8s" / "components" / c) for c in components]}))
    return render(tmp_path)


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request) -> list[dict]:
    return render(f"k8s/overlays/{request.param}")


@pytest.fixture(scope="module")
def gpu() -> list[dict]:
    return render("k8s/overlays/gpu")


@pytest.fixture(scope="module")
def local() -> list[dict]:
    return render("k8s/overlays/local")


def pod_template(workload: dict) -> dict:
    spec = workload["spec"]
    return spec["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" \
        else spec["template"]


def pod_specs(docs: list[dict]):
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d, pod_template(d)["spec"]


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def one(docs, kind, name) -> dict:
    """The object named `name` (generated ConfigMaps and Secrets carry a hash suffix)."""
    [found] = [d for d in docs if d["kind"] == kind and re.fullmatch(
        rf"{re.escape(name)}(-[a-z0-9]{{10}})?", d["metadata"]["name"])]
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", ["k8s/base", "k8s/overlays/gpu", "k8s/overlays/local"])
def test_every_object_validates_strictly(path, version):
    rendered = render(path)
    assert rendered
    for doc in rendered:
        kubernetes_validate.validate(doc, version, strict=True)


def test_pod_failure_policy_conditions_need_a_status_on_1_33(gpu):
    """The check above would catch the omission: 1.33's schema requires `status`."""
    cronjob = one(gpu, "CronJob", "trainer")
    broken = yaml.safe_load(yaml.safe_dump(cronjob))
    rules = broken["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    del next(r for r in rules if "onPodConditions" in r)["onPodConditions"][0]["status"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33.0", strict=True)


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
            # Writable paths are explicit emptyDirs (or the store's volume); secrets
            # (the signing key) are mounted read-only.
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for mount in c.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                assert {"emptyDir", "configMap", "persistentVolumeClaim", "secret"} & \
                    set(volume), name
                if "secret" in volume:
                    assert mount.get("readOnly") is True, name


def test_every_object_has_app_kubernetes_io_labels(docs):
    for d in docs:
        labels = d["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "vgg16-transfer", d["metadata"]
        assert "app.kubernetes.io/name" in labels, d["metadata"]
    for workload, _ in pod_specs(docs):
        pod_labels = pod_template(workload)["metadata"]["labels"]
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
        labels = pod_template(workload)["metadata"]["labels"]
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


def _cli_of(container: dict) -> click.Group | None:
    """The command line a container runs: the puller image's, or the trainer image's (which
    also runs `python -m serving rollback`)."""
    if container.get("command") == ["python", "-m", "serving"] or "puller" in \
            container["image"]:
        return serving_cli
    return trainer_cli if "trainer" in container["image"] else None


def _stand_in(name: str, value: str) -> str:
    """A secret's or ConfigMap key's value as the test's environment gets it."""
    if not value.startswith("<"):
        return value
    return "1764349200" if name == "CANDIDATE_VERSION" else "x"


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
            group = _cli_of(c)
            if group is None:
                continue
            command = group.commands[args[0]]
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


def tfserving_command_line(container: dict) -> list[str]:
    """What the TF Serving container runs: the image's entrypoint (serving/Dockerfile, the
    project's flags) and the Deployment's `args`, which add only what differs."""
    from tests.k8s.test_containers import instructions

    [entrypoint] = [rest for word, rest in instructions("serving/Dockerfile")
                    if word == "ENTRYPOINT"]
    assert "command" not in container  # inherits the image's, flags and all
    return yaml.safe_load(entrypoint) + container.get("args", [])


def test_container_args_are_flags_the_programs_accept(docs):
    for _, spec in pod_specs(docs):
        for c in containers(spec):
            args = [a.replace("$(DATA_URI)", "s3://b/d") for a in c.get("args", [])]
            if "tfserving" in c["image"]:
                assert tfserving_command_line(c)[:4] == [
                    "/usr/bin/tini", "-s", "--", "/usr/bin/tensorflow_model_server"]
                image_flags = {a.split("=")[0] for a in tfserving_command_line(c)[4:]
                               if a not in args}
                # Only what differs: no flag given twice.
                assert not image_flags & {a.split("=")[0] for a in args}, args
                defined = {e["name"] for e in c.get("env", [])}
                for arg in args:
                    flag, _, value = arg.removeprefix("--").partition("=")
                    assert flag in TF_SERVING_FLAGS and value, arg
                    for ref in re.findall(r"\$\((\w+)\)", value):
                        assert ref in defined, arg  # Kubernetes expands only defined vars
            elif _cli_of(c) is not None:
                command = _cli_of(c).commands[args[0]]
                with pytest.MonkeyPatch.context() as mp:
                    # The values the container really gets (secrets stand in as text), so a
                    # value click cannot parse (REQUIRE_GPU=maybe) fails here too.
                    for k, v in _env(docs, c).items():
                        mp.setenv(k, _stand_in(k, v))
                    command.make_context(args[0], args[1:])  # raises on an unknown flag
            elif "seaweedfs" in c["image"]:
                # stderr, not log files filling its small /tmp; a global flag, so first.
                assert c["args"][:2] == ["-logtostderr=true", "mini"], shlex.join(c["args"])


def test_tfserving_reads_the_projects_own_config_files(docs):
    config = one(docs, "ConfigMap", "tfserving-config")
    assert set(config["data"]) == {"batching.config", "monitoring.config"}
    for name in config["data"]:
        assert config["data"][name] == (REPO / "serving" / "config" / name).read_text()
    deployment = one(docs, "Deployment", "serving")
    [tfserving] = deployment["spec"]["template"]["spec"]["containers"]
    models_mount = next(m for m in tfserving["volumeMounts"] if m["name"] == "models")
    # models.config is the puller's (labels from the store), on the volume both mount; TF
    # Serving re-reads it and may take new labels on versions still loading.
    for init in deployment["spec"]["template"]["spec"]["initContainers"]:
        assert _env(docs, init)["MODEL_CONFIG_FILE"] == "/models/models.config"
    runs = tfserving_command_line(tfserving)
    assert "--model_config_file=/models/models.config" in runs
    assert "--model_config_file_poll_wait_seconds=10" in runs
    assert "--allow_version_labels_for_unavailable_models=true" in runs
    assert "/models/models.config".startswith(models_mount["mountPath"] + "/")
    puller_env = _env(docs, deployment["spec"]["template"]["spec"]["initContainers"][0])
    # Its base path (the puller's --dest) is inside TF Serving's mount.
    [model] = serving_config.load_models(REPO / "serving" / "config" / "models.config")
    assert model.base_path == puller_env["MODEL_DEST"] == "/models/classifier"
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
    # Not open to every pod: 8500 also serves ModelService (reload config, no auth).
    assert rule["from"], "an ingress rule without `from` admits the whole cluster"
    label = {"vgg16-transfer/model-client": "true"}
    assert {"podSelector": {"matchLabels": label}} in rule["from"]
    assert {"namespaceSelector": {"matchLabels": label}, "podSelector": {"matchLabels": label}} \
        in rule["from"]
    egress_ports = {p["port"] for r in policy["spec"]["egress"] for p in r["ports"]}
    assert egress_ports == {53, 443}
    trainer = one(docs, "NetworkPolicy", "trainer")
    assert trainer["spec"]["ingress"] == []


def test_training_is_a_template_that_applying_never_runs(docs):
    """Applying (or GitOps-syncing) the stack must not start a GPU run that publishes a
    model: training is a suspended CronJob, and each run a Job created from it."""
    assert not [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "trainer"]
    cronjob = one(docs, "CronJob", "trainer")
    assert cronjob["spec"]["suspend"] is True
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] > 0
    assert job["ttlSecondsAfterFinished"] > 0
    [c] = job["template"]["spec"]["containers"]
    assert c["args"] == ["train"]
    rules = job["podFailurePolicy"]["rules"]
    # 2 (bad input) and 4 (model not good enough) fail the Job at once; 1 and 3 retry.
    assert {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                 "values": [2, 4]}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget",
                                                     "status": "True"}]} in rules


def test_promote_and_rollback_are_templates_with_the_trainers_access(docs):
    """Like training: suspended CronJobs (applying never moves a label), the trainer image
    and credentials (they write the labels object), exit 2 and 4 final."""
    for name, cli in (("promote", None), ("rollback", ["python", "-m", "serving"])):
        cronjob = one(docs, "CronJob", name)
        assert cronjob["spec"]["suspend"] is True
        job = cronjob["spec"]["jobTemplate"]["spec"]
        [rule] = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
        assert rule["onExitCodes"]["values"] == [2, 4]
        pod = job["template"]["spec"]
        [c] = pod["containers"]
        assert pod["serviceAccountName"] == "trainer"
        # promote is the image's own `trainer promote`; rollback is `serving rollback`.
        assert c.get("command") == cli and c["args"][0] == name
        assert "trainer" in c["image"]
        env = _env(docs, c)
        assert env["MODEL_SOURCE"].endswith("/" + env["MODEL_NAME"])
        secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"]
                   if "secretKeyRef" in e.get("valueFrom", {})}
        assert secrets == {"s3-credentials"}
        # Its report goes where the read-only root filesystem lets it write.
        if name == "promote":
            assert c["args"][c["args"].index("--report-dir") + 1].startswith("/tmp/")
            assert {"CANDIDATE_VERSION", "EVAL_DATA_URI"} <= set(env)


def test_the_feature_pass_is_an_indexed_job_template_one_shard_per_index(docs):
    """`trainer extract` as a suspended Indexed Job: SHARD_COUNT = completions, each failed
    index retried on its own, bad input fails the Job; it fills the cache the trainer reads,
    with the same weights and seed."""
    cronjob = one(docs, "CronJob", "extract")
    assert cronjob["spec"]["suspend"] is True
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in job
    assert 1 <= job["parallelism"] <= job["completions"]
    pod = job["template"]["spec"]
    [c] = pod["containers"]
    assert c["args"] == ["extract"] and pod["restartPolicy"] == "Never"
    env = _env(docs, c)
    assert int(env["SHARD_COUNT"]) == job["completions"]
    [fail] = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail["onExitCodes"]["values"] == [2]
    trainer = pod_template(one(docs, "CronJob", "trainer"))["spec"]["containers"][0]
    trainer_env = _env(docs, trainer)
    for name in ("DATA_URI", "FEATURE_CACHE", "WEIGHTS", "SEED"):
        assert env.get(name) == trainer_env.get(name), name
    assert env["FEATURE_CACHE"].startswith("s3://")


def test_production_publishes_only_good_enough_models(docs):
    """The sidecars put every published version live: the gate must be a real one."""
    cronjob = one(docs, "CronJob", "trainer")
    [c] = pod_template(cronjob)["spec"]["containers"]
    threshold = float(_env(docs, c)["MIN_VAL_ACCURACY"])
    assert threshold >= 0.5


def test_the_autoscaler_alone_owns_the_replica_count(docs):
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        target = one(docs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "every apply would reset the HPA's count"


def test_first_deploy_waits_for_a_version_and_drains_cleanly(docs):
    deployment = one(docs, "Deployment", "serving")
    spec = deployment["spec"]["template"]["spec"]
    sync = spec["initContainers"][0]
    wait = float(sync["args"][sync["args"].index("--wait-timeout") + 1])
    assert wait >= 3600  # a first training run takes a while; no Init:CrashLoopBackOff
    [tfserving] = spec["containers"]
    assert tfserving_command_line(tfserving)[0] == "/usr/bin/tini"  # SIGTERM reaches it
    pre_stop = tfserving["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "/bin/sleep" and 0 < int(pre_stop[1]) < \
        spec["terminationGracePeriodSeconds"]
    pdb = one(docs, "PodDisruptionBudget", "serving")
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # drains never hang


def test_thread_pools_follow_the_cpu_limit_not_the_node(docs):
    [tfserving] = one(docs, "Deployment", "serving")["spec"]["template"]["spec"]["containers"]
    assert "--tensorflow_intra_op_parallelism=$(CPU_LIMIT)" in tfserving["args"]
    assert "--tensorflow_inter_op_parallelism=$(CPU_LIMIT)" in tfserving["args"]
    [cpu] = [e for e in tfserving["env"] if e["name"] == "CPU_LIMIT"]
    assert cpu["valueFrom"]["resourceFieldRef"] == {
        "containerName": "tfserving", "resource": "limits.cpu", "divisor": "1"}
    batching = (REPO / "serving" / "config" / "batching.config").read_text()
    assert "num_batch_threads { value: 1 }" in batching  # one batch uses every intra-op thread


def test_grpc_clients_can_spread_over_pods_through_a_headless_service(docs):
    headless = one(docs, "Service", "serving-grpc")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == one(docs, "Service", "serving")["spec"]["selector"]
    assert [(p["name"], p["port"]) for p in headless["spec"]["ports"]] == [("grpc", 8500)]


@pytest.mark.parametrize("name", ["trainer", "extract"])
def test_gpu_overlay_trains_on_gpu_nodes(gpu, name):
    spec = pod_template(one(gpu, "CronJob", name))["spec"]
    [c] = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["image"].endswith(":0.1.0-gpu")
    # The GPU request places the pod; a label selector would leave it Pending for ever
    # where no GPU Operator / Feature Discovery labels the nodes.
    assert "nodeSelector" not in spec
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        spec["tolerations"]
    assert _env(gpu, c)["REQUIRE_GPU"] == "true"  # no silent CPU fallback


def test_local_overlay_brings_its_store_credentials_and_data(local):
    store = one(local, "Deployment", "seaweedfs")
    assert one(local, "PersistentVolumeClaim", "seaweedfs")
    assert one(local, "Service", "seaweedfs")
    assert one(local, "Secret", "s3-credentials")["type"] == "Opaque"
    assert "-bucket=datasets,models,cache" in store["spec"]["template"]["spec"][
        "containers"][0]["args"]
    sample = one(local, "Job", "sample-data")
    assert sample["spec"]["template"]["spec"]["containers"][0]["args"][0] == "sample-data"
    trainer = pod_template(one(local, "CronJob", "trainer"))["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in trainer["resources"]["limits"]
    assert "REQUIRE_GPU" not in _env(local, trainer)
    assert trainer["image"].endswith(":0.1.0")


@pytest.mark.parametrize("component", COMPONENTS)
def test_egress_components_are_opt_in_and_valid(tmp_path, gpu, component):
    """Extra egress (node role, EKS Pod Identity, a store on another port) only when an
    overlay asks for it; the default stays DNS and HTTPS."""
    base = {tuple(sorted(p["port"] for r in one(gpu, "NetworkPolicy", n)["spec"]["egress"]
                          for p in r["ports"])) for n in ("serving", "trainer")}
    assert base == {(53, 53, 443)}
    docs = render_with_components(tmp_path, "gpu", [component])
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    for name in ("serving", "trainer"):
        extra = one(docs, "NetworkPolicy", name)["spec"]["egress"][2:]
        assert len(extra) == 1, (component, name)
        [port] = extra[0]["ports"]
        expected = {"egress-instance-metadata": ("169.254.169.254/32", 80),
                    "egress-pod-identity": ("169.254.170.23/32", 80),
                    "egress-store-port": (None, 9000)}[component]
        cidr = extra[0]["to"][0]["ipBlock"]["cidr"] if "to" in extra[0] else None
        assert (cidr, port["port"]) == expected


def test_bfloat16_serving_is_opt_in_and_lands_on_bfloat16_nodes(tmp_path, gpu):
    """The bfloat16 component adds TF Serving's --mixed_precision=bfloat16 to the server and
    nothing else, and schedules the serving pods only on nodes whose CPUs have AVX512-BF16
    or AMX-BF16; the default overlay has neither."""
    def tfserving(docs):
        spec = pod_template(one(docs, "Deployment", "serving"))["spec"]
        [server] = [c for c in spec["containers"] if c["name"] == "tfserving"]
        return spec, server

    spec, server = tfserving(gpu)
    assert not any("mixed_precision" in a for a in server["args"])
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"][
        "nodeAffinity"]  # only the preference to stay off GPU nodes
    docs = render_with_components(tmp_path, "gpu", ["bfloat16-serving"])
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    spec, bf16_server = tfserving(docs)
    assert bf16_server["args"] == server["args"] + ["--mixed_precision=bfloat16"]
    assert "mixed_precision" in TF_SERVING_FLAGS  # serving local takes it too
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert sorted(t["matchExpressions"][0]["key"] for t in terms) == [
        "feature.node.kubernetes.io/cpu-cpuid.AMXBF16",
        "feature.node.kubernetes.io/cpu-cpuid.AVX512BF16"]
    assert [d for d in docs if d["kind"] != "Deployment"] == \
        [d for d in gpu if d["kind"] != "Deployment"]


def test_signing_keys_each_reach_only_their_side(tmp_path):
    """Production verifies signatures: the private key is mounted into the trainer alone, the
    public key into both puller containers, and the paths are the ones the CLIs read."""
    gpu_docs = render("k8s/overlays/gpu")
    mounts: dict[str, dict[str, str]] = {}
    for _workload, spec in pod_specs(gpu_docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            for m in c.get("volumeMounts", []):
                source = volumes[m["name"]]
                if source.get("secret", {}).get("secretName") == "model-signing-key" or \
                        source.get("configMap", {}).get("name") == "model-verify-key":
                    assert m.get("readOnly") is True, c["name"]
                    mounts.setdefault(c["name"], {})[m["mountPath"]] = \
                        env.get("SIGNING_KEY") or env.get("VERIFY_KEY")
    assert mounts == {
        "trainer": {"/var/run/secrets/model-signing":
                    "/var/run/secrets/model-signing/signing-key.pem"},
        "model-sync": {"/etc/model-signing": "/etc/model-signing/verify-key.pub"},
        "model-puller": {"/etc/model-signing": "/etc/model-signing/verify-key.pub"},
        # promote and rollback (issue 27, item 6): labels move only to signed versions.
        "lifecycle": {"/etc/model-signing": "/etc/model-signing/verify-key.pub"},
    }
    for job in ("promote", "rollback"):
        [c] = pod_template(one(gpu_docs, "CronJob", job))["spec"]["containers"]
        assert {"name": "VERIFY_KEY", "value": "/etc/model-signing/verify-key.pub"} in c["env"]
    # Opt-in on the laptop overlay, where it renders and validates the same way.
    local_signed = render_with_components(tmp_path, "local", ["model-signing"])
    for doc in local_signed:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert "SIGNING_KEY" in str(one(local_signed, "CronJob", "trainer"))
    assert "SIGNING_KEY" not in str(render("k8s/overlays/local"))


def test_serving_reads_the_store_with_its_own_read_only_credentials(gpu, local):
    """The serving pods never get the trainer's read-write Secret; on the laptop overlay the
    in-cluster store knows both identities, the serving one limited to reading models."""
    import json

    from tools.seaweed import identities

    for docs in (gpu, local):
        for workload, spec in pod_specs(docs):
            secrets = {e["valueFrom"]["secretKeyRef"]["name"] for c in containers(spec)
                       for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
            name = workload["metadata"]["name"]
            if name == "serving":
                assert secrets == {"s3-credentials-serving"}, secrets
            elif name in ("trainer", "sample-data", "seaweedfs"):
                assert secrets <= {"s3-credentials"}, (name, secrets)

    def env_file(name: str) -> tuple[str, str]:
        values = dict(line.split("=", 1) for line in
                      (REPO / "k8s/overlays/local" / name).read_text().splitlines() if line)
        return values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]

    written = json.loads((REPO / "k8s/overlays/local/dev-identities.json").read_text())
    assert written == identities(env_file("dev-credentials.env"),
                                 env_file("dev-credentials-serving.env"))
    store = one(local, "Deployment", "seaweedfs")
    [container] = store["spec"]["template"]["spec"]["containers"]
    assert "-s3.config=/etc/seaweedfs/s3.json" in container["args"]
    assert "AWS_SECRET_ACCESS_KEY" not in str(container.get("env", []))


def _selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels, matchExpressions with In/NotIn/Exists) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value = labels.get(e["key"])
        if (e["operator"] == "In" and value not in e["values"]) or \
                (e["operator"] == "NotIn" and value in e["values"]) or \
                (e["operator"] == "Exists" and e["key"] not in labels):
            return False
    return True


def test_the_namespace_denies_by_default_and_every_pod_has_the_traffic_it_needs(docs):
    """Issue 27: no default deny, so a pod without a policy of its own talked to anything.
    Now every pod is selected by default-deny, and each workload by a policy that gives it
    DNS; a labelled client pod in the namespace may reach the model server's ports."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = one(docs, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for workload, _ in pod_specs(docs):
        labels = pod_template(workload)["metadata"]["labels"]
        mine = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        dns = {port["port"] for p in mine for rule in p["spec"].get("egress", [])
               for port in rule.get("ports", [])}
        assert 53 in dns, f"{workload['kind']}/{workload['metadata']['name']} gets no DNS"
    client = {"vgg16-transfer/model-client": "true"}
    [rule] = [r for p in policies if _selects(p["spec"]["podSelector"], client)
              for r in p["spec"].get("egress", []) if r.get("to")]
    assert sorted(p["port"] for p in rule["ports"]) == [8500, 8501]
    assert rule["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name":
                                                           "serving"}}}]


def test_the_probes_ask_for_the_model_the_storage_settings_name(tmp_path):
    """Issue 29: the probe paths said /v1/models/classifier whatever MODEL_NAME was. With the
    storage literals edited as the README's step 2 says (in k8s/base), the probes ask for
    the model named there."""
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    shutil.copytree(REPO / "serving" / "config", tmp_path / "serving" / "config")
    base = tmp_path / "k8s" / "base" / "kustomization.yaml"
    base.write_text(base.read_text().replace("classifier", "dinosaurs"))
    docs = render(tmp_path / "k8s" / "overlays" / "gpu")
    [serving] = [d for d in docs if d["kind"] == "Deployment" and
                 d["metadata"]["name"] == "serving"]
    [tfserving] = [c for c in pod_template(serving)["spec"]["containers"]
                   if c["name"] == "tfserving"]
    for probe in ("startupProbe", "readinessProbe"):
        assert tfserving[probe]["httpGet"]["path"] == "/v1/models/dinosaurs"


def test_serving_survives_a_node_a_zone_and_a_drain(docs):
    """Issue 29: both minimum replicas could share a node, `minAvailable: 1` let a drain
    evict five of six, Burstable pods holding 0.55 GB versions were evicted first, and the
    CronJob controller deleted all but the last failed run."""
    serving = one(docs, "Deployment", "serving")
    spec = pod_template(serving)["spec"]
    spread = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    selector = serving["spec"]["selector"]["matchLabels"]
    assert all(c["labelSelector"]["matchLabels"] == selector and c["maxSkew"] == 1
               and c["nodeTaintsPolicy"] == "Honor" for c in spread.values())
    for c in containers(spec):  # Guaranteed QoS: every container's requests == limits
        assert c["resources"]["requests"] == c["resources"]["limits"], c["name"]
    pdb = one(docs, "PodDisruptionBudget", "serving")["spec"]
    assert "minAvailable" not in pdb  # the two exclude each other
    # A quarter at a time; the laptop overlay's single pod may go.
    assert pdb["maxUnavailable"] == ("100%" if one(
        docs, "HorizontalPodAutoscaler", "serving")["spec"]["minReplicas"] == 1 else "25%")
    [tfserving] = [c for c in spec["containers"] if c["name"] == "tfserving"]
    [channel] = [a for a in tfserving["args"] if a.startswith("--grpc_channel_arguments=")]
    assert "grpc.max_connection_age_ms=" in channel
    for cronjob in (d for d in docs if d["kind"] == "CronJob"):
        assert cronjob["spec"]["successfulJobsHistoryLimit"] >= 10, cronjob["metadata"]
        assert cronjob["spec"]["failedJobsHistoryLimit"] >= 10, cronjob["metadata"]


def test_gpu_overlay_keeps_gpus_for_training(tmp_path, gpu):
    """Issue 29: promote and rollback pulled the multi-GB -gpu image onto CPU nodes, serving
    could land on untainted GPU nodes, and there was no way to name a RuntimeClass or to
    tolerate spot taints."""
    images = {d["metadata"]["name"]: pod_template(d)["spec"]["containers"][0]["image"]
              for d in gpu if d["kind"] == "CronJob"}
    assert images["trainer"].endswith("-gpu") and images["extract"].endswith("-gpu")
    assert images["promote"] == images["rollback"] == images["trainer"].removesuffix("-gpu")
    spec = pod_template(one(gpu, "Deployment", "serving"))["spec"]
    [preference] = spec["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert preference["preference"]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}]
    docs = render_with_components(tmp_path, "gpu", ["training-on-spot", "gpu-runtime-class"])
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    for name in ("trainer", "extract"):
        pod = pod_template(one(docs, "CronJob", name))["spec"]
        assert pod["runtimeClassName"] == "nvidia"
        keys = {t["key"] for t in pod["tolerations"]}
        assert {"nvidia.com/gpu", "cloud.google.com/gke-spot",
                "kubernetes.azure.com/scalesetpriority"} <= keys
    for name in ("promote", "rollback"):  # no GPU, no spot for them
        assert "runtimeClassName" not in pod_template(one(docs, "CronJob", name))["spec"]
