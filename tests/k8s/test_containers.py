"""Dockerfiles, dependency locks and the docker compose stack, checked statically with real
tools (hadolint, the compose file's own structure, and `docker compose config` when a
compose-capable Docker is present)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format

from serving.devserver import config as serving_config

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ["trainer/Dockerfile", "serving/Dockerfile", "serving/puller.Dockerfile"]


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (REPO / path).read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def arg_defaults(path: str) -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in instructions(path) if w == "ARG" and "=" in a)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {normalize(name): version for name, version in (d.split("==") for d in deps)}


def lock_entries(name: str) -> dict[str, tuple[str, list[str]]]:
    """{package: (version, [sha256 hashes])} of a `uv pip compile --generate-hashes` lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (REPO / "requirements" / name).read_text().splitlines():
        text = line.strip().rstrip("\\").strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("--hash=sha256:"):
            entries[current][1].append(text.removeprefix("--hash=sha256:"))
        else:
            package, version = text.split("==")
            current = normalize(package)
            entries[current] = (version, [])
    return entries


def lock(name: str) -> dict[str, str]:
    return {package: version for package, (version, _) in lock_entries(name).items()}


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([tool("hadolint"), str(REPO / dockerfile)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_are_pinned_non_root_and_exec_form(dockerfile):
    steps = instructions(dockerfile)
    defaults = arg_defaults(dockerfile)
    for word, rest in steps:
        if word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), ""),
                           rest.split()[0])
            name, _, tag = image.partition(":")
            assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), image
    [user] = [rest for word, rest in steps if word == "USER"]
    uid = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], user).split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, user
    [entrypoint] = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert entrypoint.startswith("["), entrypoint  # exec form
    assert (REPO / f"{dockerfile}.dockerignore").read_text() == \
        (REPO / ".dockerignore").read_text()


def test_trainer_image_cpu_gpu_from_one_file_with_weights_baked_in():
    steps = instructions("trainer/Dockerfile")
    defaults = arg_defaults("trainer/Dockerfile")
    assert defaults["TF_VERSION"] == pyproject_pins()["tensorflow"]
    assert defaults["TF_VARIANT"] == ""  # CPU by default; --build-arg TF_VARIANT=-gpu
    assert ("FROM", "tensorflow/tensorflow:${TF_VERSION}${TF_VARIANT}") in steps
    runs = [rest for word, rest in steps if word == "RUN"]
    copies = [rest for word, rest in steps if word == "COPY"]
    assert "keras.applications.VGG16(include_top=True, weights='imagenet')" in " ".join(runs)
    # Dependencies from the lock are installed before the source is copied (layer caching).
    lock_copy = next(i for i, c in enumerate(copies) if "trainer.lock" in c)
    source_copy = next(i for i, c in enumerate(copies) if c.startswith("trainer/"))
    assert lock_copy < source_copy
    assert ("ENTRYPOINT", '["python", "-m", "trainer"]') in steps


def test_locks_agree_with_pyproject_and_pin_every_download_by_hash():
    pins = pyproject_pins()
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    for name in ("trainer.lock", "puller.lock", "tf-serving-runtime.lock"):
        entries = lock_entries(name)
        for package, (version, hashes) in entries.items():
            if package in pins and name != "tf-serving-runtime.lock":
                assert pins[package] == version, (name, package)
            # pip --require-hashes refuses a lock entry without one; every hash is sha256.
            assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), \
                (name, package)
    trainer = lock("trainer.lock")
    assert set(pins) <= set(trainer)  # the trainer image has everything the project needs
    for requirement in build:  # the build backend, for pip install --no-build-isolation .
        package, version = requirement.split("==")
        assert lock("trainer.lock")[normalize(package)] == version
        assert lock("puller.lock")[normalize(package)] == version
    puller_in = (REPO / "requirements" / "puller.in").read_text().splitlines()
    for line in puller_in:
        if line and not line.startswith("#"):
            package, version = line.split("==")
            assert pins[normalize(package)] == version, package


@pytest.mark.parametrize("dockerfile", ["trainer/Dockerfile", "serving/puller.Dockerfile"])
def test_images_install_only_hashed_locked_packages(dockerfile):
    runs = [rest for word, rest in instructions(dockerfile) if word == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert installs
    for run in installs:
        if " -r requirements/" in run:
            assert "--require-hashes" in run and "--no-deps" in run, run
        else:  # the project itself: no dependencies, no build-isolation download
            assert "--no-deps" in run and "--no-build-isolation" in run, run


def test_the_puller_image_has_every_module_the_puller_imports(tmp_path):
    """Run `serving pull --help`, and sign and verify a folder the way `--verify-key` does,
    with only the puller lock's packages (plus the standard library and the project)
    importable."""
    from tests.conftest import write_key_pair

    private, public = write_key_pair(tmp_path / "key")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"graph")
    from importlib.metadata import packages_distributions

    locked = set(lock("puller.lock"))
    allowed = {module for module, dists in packages_distributions().items()
               if any(normalize(d) in locked for d in dists)}
    allowed |= set(sys.stdlib_module_names) | {"commandline", "contract", "serving",
                                               "_distutils_hack"}
    code = f"""
import sys
allowed = {sorted(allowed)!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in allowed and not top.startswith("_sysconfigdata"):  # stdlib, per build
            raise ModuleNotFoundError(f"the puller image has no {{name}}")
sys.meta_path.insert(0, Block())
import serving.puller
from serving.cli import cli
cli(["pull", "--help"], standalone_mode=False)
from pathlib import Path
from contract.signing import SigningKey, VerifyKey
folder = Path({str(tmp_path / "model")!r})
SigningKey.load({str(private)!r}).sign(folder)
key = VerifyKey.load({str(public)!r})
key.signed_digests(folder / "model.sig")
key.verify_folder(folder)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--watch" in proc.stdout


def test_serving_image_uses_the_project_config_and_known_flags():
    from tests.k8s.test_manifests import TF_SERVING_FLAGS

    steps = instructions("serving/Dockerfile")
    assert arg_arg(steps, "TF_SERVING_VERSION") == "2.20.0"
    [entrypoint] = [rest for word, rest in steps if word == "ENTRYPOINT"]
    args = yaml.safe_load(entrypoint)
    # tini as PID 1 passes SIGTERM on; the server itself installs no handler.
    assert args[:4] == ["/usr/bin/tini", "-s", "--", "/usr/bin/tensorflow_model_server"]
    assert any(re.search(r"apt-get install .*\btini=\d", rest) for word, rest in steps
               if word == "RUN")
    flags = dict(a.removeprefix("--").split("=", 1) for a in args[4:])
    assert set(flags) <= TF_SERVING_FLAGS
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert flags["enable_grpc_healthcheck_service"] == "true"
    copied = next(rest for word, rest in steps if word == "COPY").split()
    for path in copied[:-1]:
        assert (REPO / path).is_file(), path
        assert f"/etc/tfserving/{Path(path).name}" in flags.values()


def test_the_trainer_image_can_run_promote_and_rollback():
    """`trainer promote` scores versions in-process with the evaluation's code, and `serving
    rollback` runs beside it in the trainer image: both command lines, the store code and
    the evaluation import with only the trainer lock's packages."""
    from importlib.metadata import packages_distributions

    copies = [rest.split()[0] for word, rest in instructions("trainer/Dockerfile")
              if word == "COPY"]
    assert {"commandline/", "contract/", "trainer/", "serving/"} <= set(copies)
    locked = set(lock("trainer.lock"))
    allowed = {module for module, dists in packages_distributions().items()
               if any(normalize(d) in locked for d in dists)}
    allowed |= set(sys.stdlib_module_names) | {"commandline", "contract", "serving",
                                               "trainer", "_distutils_hack"}
    code = f"""
import sys
allowed = {sorted(allowed)!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in allowed and not top.startswith("_sysconfigdata"):
            raise ModuleNotFoundError(f"the trainer image has no {{name}}")
sys.meta_path.insert(0, Block())
import contract.model_folder, trainer.evaluate
from serving.cli import cli
from trainer.cli import cli as trainer_cli
trainer_cli(["promote", "--help"], standalone_mode=False)
for command in ("rollback", "label", "gc"):
    cli([command, "--help"], standalone_mode=False)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--max-accuracy-drop" in proc.stdout


def arg_arg(steps, name: str) -> str:
    return next(rest.split("=", 1)[1] for word, rest in steps
                if word == "ARG" and rest.startswith(f"{name}="))


# ---------------------------------------------------------------------------------------
# docker compose

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _env(service: dict) -> dict:
    return service.get("environment", {})


def mounts(service: dict) -> dict[str, dict]:
    """A service's volume mounts by target: source, read_only, nocopy (short and long
    syntax alike)."""
    found = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target, *mode = v.split(":")
            found[target] = {"source": source, "read_only": mode == ["ro"], "nocopy": False}
        else:
            found[v["target"]] = {"source": v["source"], "read_only": v.get("read_only", False),
                                  "nocopy": v.get("volume", {}).get("nocopy", False)}
    return found


def test_every_compose_image_is_pinned(compose):
    for name, service in compose["services"].items():
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest", name
        if "build" in service:
            assert (REPO / service["build"]["dockerfile"]).is_file()
            assert service["image"].startswith("vgg16-transfer/")


def test_long_running_services_have_healthchecks_and_no_host_network(compose):
    for name in ("s3", "puller", "tfserving"):
        assert compose["services"][name]["healthcheck"]["test"], name
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host" and not service.get("privileged"), name
        assert service.get("read_only") is True and service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert set(service.get("cap_add", [])) <= {"CHOWN"}, name
    for name in ("s3", "init", "trainer", "puller", "tfserving"):
        assert compose["services"][name]["init"] is True, name  # signals reach the program


def test_the_store_runs_as_non_root_and_logs_to_stderr(compose):
    s3 = compose["services"]["s3"]
    assert s3["user"] == "10001:10001"
    assert s3["command"][:2] == ["-logtostderr=true", "mini"]  # a global flag: first
    owner = compose["services"]["s3-volume"]
    assert owner["command"][:3] == ["sh", "/s3-identities.sh", "/data"]
    assert owner["cap_add"] == ["CHOWN"] and owner["network_mode"] == "none"
    assert "-s3.config=/config/s3.json" in s3["command"]
    assert s3["depends_on"]["s3-volume"]["condition"] == "service_completed_successfully"


def test_every_volume_a_service_writes_is_its_users_before_it_starts(compose, tmp_path):
    """Issue 29: Docker creates a named volume owned by root, or copies an image's folder
    into it with the image's owners (TF Serving's root-owned /models, SeaweedFS's
    /data/filerldb2 of UID 1000), and compose creates every container before starting any.
    So the one-shot step, which runs after all that, hands each volume a non-root service
    writes, recursively, to UID 10001, and every such service waits for it; the readers
    mount theirs nocopy."""
    services = compose["services"]
    step = services["s3-volume"]
    owned = {mounts(step)[p]["source"] for p in step["command"][2:]}
    for name, service in services.items():
        user = service.get("user") or ("10001:10001" if "build" in service else None)
        if name == "s3-volume" or user != "10001:10001":
            continue
        for target, mount in mounts(service).items():
            if mount["read_only"] or mount["source"].startswith("."):
                continue
            assert mount["source"] in owned, (name, target)
            waits = service["depends_on"]
            assert "s3-volume" in waits or any(
                "s3-volume" in services[d].get("depends_on", {}) for d in waits), name
    assert mounts(services["s3"])["/data"]["nocopy"] is True
    assert mounts(services["tfserving"])["/models"]["nocopy"] is True
    # The step's script, run on folders made like such volumes, leaves nothing unowned.
    if os.geteuid() != 0:
        pytest.skip("chown needs root here")
    volume = tmp_path / "data"
    (volume / "filerldb2").mkdir(parents=True)
    (volume / "filerldb2" / "LOCK").write_text("")
    os.chown(volume / "filerldb2", 1000, 1000)
    env = {"AWS_ACCESS_KEY_ID": "vgg16-ab12", "AWS_SECRET_ACCESS_KEY": "0123abcd" * 6,
           "SERVING_ACCESS_KEY_ID": "serving-cd34", "SERVING_SECRET_ACCESS_KEY": "9876fedc" * 6,
           "CONFIG": str(tmp_path / "s3.json"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["sh", str(REPO / "tools" / "s3-identities.sh"), str(volume)],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert {(p.stat().st_uid, p.stat().st_gid) for p in [volume, *volume.rglob("*")]} == \
        {(10001, 10001)}


def test_the_signing_key_reaches_only_the_trainer_and_its_public_half_the_puller(
        compose, tmp_path):
    services = compose["services"]
    mounting = {volume: sorted(name for name, s in services.items()
                               if any(m["source"] == volume for m in mounts(s).values()))
                for volume in ("signing-key", "verify-key")}
    assert mounting == {"signing-key": ["keys", "s3-volume", "trainer"],
                        "verify-key": ["keys", "puller", "s3-volume"]}
    assert "signing-key:/run/keys:ro" in services["trainer"]["volumes"]
    assert "verify-key:/run/keys:ro" in services["puller"]["volumes"]
    for name in ("trainer", "puller"):
        assert services[name]["depends_on"]["keys"]["condition"] == \
            "service_completed_successfully"
    # The keys step's own command, with its two volumes mapped to folders here, makes the
    # files the trainer's SIGNING_KEY and the puller's VERIFY_KEY name.
    keys = services["keys"]
    assert keys["network_mode"] == "none"
    mapped = {"/keys/signing": tmp_path / "signing", "/keys/verify": tmp_path / "verify"}
    args = [str(mapped[a.rsplit("/", 1)[0]] / a.rsplit("/", 1)[1]) if a.startswith("/keys/")
            else a for a in keys["command"]]
    proc = subprocess.run([sys.executable, *keys["entrypoint"][1:], *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    signing = _env(services["trainer"])["SIGNING_KEY"].removeprefix("/run/keys/")
    verify = _env(services["puller"])["VERIFY_KEY"].removeprefix("/run/keys/")
    assert (tmp_path / "signing" / signing).stat().st_mode & 0o077 == 0  # private: 0600
    assert (tmp_path / "verify" / verify).read_text().startswith("-----BEGIN PUBLIC KEY")
    assert not (tmp_path / "verify" / signing).exists()


def test_tf_serving_is_off_the_stores_network(compose):
    services = compose["services"]
    networks = {name: s.get("networks", s.get("network_mode")) for name, s in services.items()}
    assert networks == {"s3-volume": "none", "keys": "none", "s3": ["store"],
                        "init": ["store"], "trainer": ["store"], "puller": ["store"],
                        "tfserving": ["serving"]}
    assert set(compose["networks"]) == {"store", "serving"}


def test_compose_writes_the_store_identities_the_tests_run_seaweedfs_with(compose, tmp_path):
    """The s3-volume step's own script, run with the environment compose gives it (paths
    mapped here), writes exactly tools/seaweed.py's identities; bad values are refused."""
    import json

    from tools.seaweed import identities

    step = compose["services"]["s3-volume"]
    script = next(v.split(":")[0] for v in step["volumes"] if "s3-identities.sh" in v)
    env = {"AWS_ACCESS_KEY_ID": "vgg16-ab12", "AWS_SECRET_ACCESS_KEY": "0123abcd" * 6,
           "SERVING_ACCESS_KEY_ID": "serving-cd34", "SERVING_SECRET_ACCESS_KEY": "9876fedc" * 6,
           "CONFIG": str(tmp_path / "s3.json"), "PATH": "/usr/bin:/bin"}
    assert set(env) - {"PATH"} == set(step["environment"])
    proc = subprocess.run(["sh", str(REPO / script)], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "s3.json").read_text())
    assert written == identities((env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]),
                                 (env["SERVING_ACCESS_KEY_ID"],
                                  env["SERVING_SECRET_ACCESS_KEY"]))
    assert (tmp_path / "s3.json").stat().st_mode & 0o077 == 0
    for bad in ({"SERVING_SECRET_ACCESS_KEY": 'a"b'}, {"AWS_ACCESS_KEY_ID": ""},
                {"SERVING_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"]}):
        proc = subprocess.run(["sh", str(REPO / script)], env={**env, **bad},
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), (bad, proc.stderr)


def test_ports_are_published_on_localhost_only(compose):
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert all(p.startswith("127.0.0.1:") for p in published), published
    assert {"127.0.0.1:8500:8500", "127.0.0.1:8501:8501"} <= set(
        compose["services"]["tfserving"]["ports"])


def test_the_env_the_code_reads_is_set(compose):
    services = compose["services"]
    for name in ("init", "trainer", "puller"):
        env = _env(services[name])
        assert env["AWS_ENDPOINT_URL"] == "http://s3:8333", name
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(env), name
        # From .env only; the puller gets the read-only serving identity.
        prefix = "SERVING" if name == "puller" else "AWS"
        assert f"${{{prefix}_SECRET_ACCESS_KEY:?" in env["AWS_SECRET_ACCESS_KEY"], name
    assert {"DATA_URI", "MODELS_URI", "MODEL_NAME"} <= set(_env(services["trainer"]))
    assert {"MODEL_SOURCE", "MODEL_DEST"} <= set(_env(services["puller"]))
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_compose_refuses_the_example_env_as_it_is(compose):
    """.env.example's values are empty, and compose's `${VAR:?...}` refuses an empty value:
    copying the example without filling it in cannot start a store with a known secret."""
    values = dict(line.split("=", 1) for line in
                  (REPO / ".env.example").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert values == {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
                      "SERVING_ACCESS_KEY_ID": "", "SERVING_SECRET_ACCESS_KEY": ""}
    for name, service in compose["services"].items():
        for key, value in _env(service).items():
            if key.endswith(("_ACCESS_KEY_ID", "_SECRET_ACCESS_KEY")):
                assert re.fullmatch(r"\$\{(AWS|SERVING)_(ACCESS_KEY_ID|SECRET_ACCESS_KEY):\?"
                                    r"copy \.env\.example to \.env and set it\}", value), \
                    (name, key)
    # The example's recipe for a .env makes values compose accepts.
    assert "openssl rand -hex 24" in (REPO / ".env.example").read_text()


def test_volumes_and_names_agree_with_the_serving_config(compose):
    [model] = serving_config.load_models(REPO / "serving" / "config" / "models.config")
    services = compose["services"]
    puller, tfserving, trainer = services["puller"], services["tfserving"], services["trainer"]
    assert _env(puller)["MODEL_DEST"] == model.base_path
    assert _env(puller)["MODEL_SOURCE"] == f"{_env(trainer)['MODELS_URI']}/{model.name}"
    assert _env(trainer)["MODEL_NAME"] == model.name
    assert mounts(puller)["/models"] == {"source": "models", "read_only": False,
                                        "nocopy": False}
    assert mounts(tfserving)["/models"] == {"source": "models", "read_only": True,
                                           "nocopy": True}
    assert model.base_path.startswith("/models/")
    assert text_format.MessageToString(model)  # a real ModelConfig
    # TF Serving (the image's entrypoint) reads the models.config the puller writes.
    assert _env(puller)["MODEL_CONFIG_FILE"] == "/models/models.config"
    assert_puller_writes_the_static_config(model, _env(puller)["MODEL_CONFIG_FILE"],
                                           "--model_config_file=/models/models.config")
    buckets = next(a for a in services["s3"]["command"] if a.startswith("-bucket="))
    for uri in (_env(trainer)["DATA_URI"], _env(trainer)["MODELS_URI"],
                _env(trainer)["FEATURE_CACHE"]):
        assert uri.removeprefix("s3://").split("/")[0] in buckets.split("=")[1].split(",")


def assert_puller_writes_the_static_config(model, config_file: str, flag: str) -> None:
    """Without labels the puller's models.config is serving/config/models.config; and the
    serving image reads it from where the puller writes it, re-reading it for labels."""
    from serving.server_config import Served, render

    written = text_format.Parse(render(model.name, model.base_path, Served(None)),
                                serving_config.ModelServerConfig())
    assert list(written.model_config_list.config) == [model]
    steps = instructions("serving/Dockerfile")
    [entrypoint] = [rest for word, rest in steps if word == "ENTRYPOINT"]
    args = yaml.safe_load(entrypoint)
    assert flag == f"--model_config_file={config_file}" and flag in args
    assert "--model_config_file_poll_wait_seconds=10" in args
    assert "--allow_version_labels_for_unavailable_models=true" in args


def _compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]):
            probe = subprocess.run([*cmd, "version"], capture_output=True, text=True)
            if probe.returncode == 0:
                return cmd
    return None


def test_docker_compose_config_accepts_the_files(tmp_path):
    cmd = _compose_cli()
    if cmd is None:
        pytest.skip("no compose-capable Docker CLI here (`docker compose version` fails)")
    env_file = tmp_path / ".env"
    # All four variables compose's `${VAR:?}` requires (issue 29: two were missing).
    env_file.write_text("AWS_ACCESS_KEY_ID=check\nAWS_SECRET_ACCESS_KEY=check-secret\n"
                        "SERVING_ACCESS_KEY_ID=serving\nSERVING_SECRET_ACCESS_KEY=s-secret\n")
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]):
        args = [a for f in files for a in ("-f", str(REPO / f))]
        proc = subprocess.run([*cmd, "--env-file", str(env_file), *args, "config", "--quiet"],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 0, proc.stderr
