"""Shared fixtures: a real SeaweedFS S3 store, sample data in it, a tiny VGG16-shaped base
model, and trained models.

Expensive things (the store, training runs) are session-scoped and reused. Nothing here mocks
S3: every `s3://` URI in the tests is served by `weed mini` on loopback. Tests that are not
about VGG16 itself train on the tiny base (tests/tiny_base.py, `--base-model`); the ones that
are name VGG16 (README, Tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from contract.names import STAGING_PREFIX
from tools.seaweed import SeaweedFS

REPO = Path(__file__).resolve().parents[1]
DATA_BUCKET = "datasets"
MODELS_BUCKET = "models"
CACHE_BUCKET = "cache"


def _clear_s3_client() -> None:
    from contract.storage import s3_client

    s3_client.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def quiet_tensorflow_and_private_caches(tmp_path_factory):
    """No test writes to the user's caches; TensorFlow's C++ chatter stays out of logs."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "TF_CPP_MIN_LOG_LEVEL")}
    os.environ["XDG_CACHE_HOME"] = str(home / "cache")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def aws_env_of(store: SeaweedFS):
    """Point this process's AWS environment (and our S3 client) at `store`, then restore.
    Every AWS/boto setting inherited from the shell is removed meanwhile (store.client_env)."""
    wanted = store.client_env(os.environ)
    saved = {k: os.environ.get(k) for k in set(os.environ) | set(wanted)}
    os.environ.clear()
    os.environ.update(wanted)
    _clear_s3_client()
    try:
        yield store
    finally:
        os.environ.clear()
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        _clear_s3_client()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A real S3 server for the whole session, with the AWS env pointing at it."""
    store = SeaweedFS(tmp_path_factory.mktemp("seaweed") / "data",
                      access_key="test-access-" + uuid.uuid4().hex[:8],
                      secret_key="test-secret-" + uuid.uuid4().hex,
                      serving_key=("test-serving-" + uuid.uuid4().hex[:8],
                                   "test-serving-secret-" + uuid.uuid4().hex))
    store.start()
    for bucket in (DATA_BUCKET, MODELS_BUCKET, CACHE_BUCKET):
        store.create_bucket(bucket)
    with aws_env_of(store):
        yield store
    store.stop()


# Scratch space a whole `make test` run needs at its peak: every exported version is ~0.5 GB
# (VGG16 to fc2), and each worker's store and session fixtures hold a few of them at once.
DISK_NEEDED_GB = 10


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true",
                     help="run only the soak tests (the long fixed windows of `make soak`)")


def pytest_report_header(config):
    """Say up front when the disk is too small: a full disk fails tests far from the cause."""
    import tempfile

    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    line = f"scratch space: {free:.0f} GB free under {tempfile.gettempdir()}"
    if free < DISK_NEEDED_GB:
        line += (f"; WARNING: a run needs about {DISK_NEEDED_GB} GB, expect 'No space left "
                 f"on device' failures (set TMPDIR to a larger disk)")
    return line


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the SeaweedFS log to every failed test that used the store."""
    report = yield
    if report.failed and "seaweed" in getattr(item, "fixturenames", ()):
        store = item.funcargs.get("seaweed")
        if store is not None:
            report.sections.append(("SeaweedFS log (last 4000 chars)", store.log_text()[-4000:]))
    return report


# Seconds each slow module of tests/integration/ took on 2 cores (summed per module, from a
# full `make test` run). Under pytest-xdist (make test: -n 2 --dist loadfile) each worker
# takes the next unit as it finishes one, in collection order, so the slowest go first and
# the short ones fill the end: neither worker is left alone with a two-minute module at the
# end of the run. Modules not named here take a few seconds. Only the order changes, never
# what runs.
MODULE_SECONDS = {
    "test_lifecycle": 234, "test_reliability": 164, "test_end_to_end": 159,
    "test_serving_lifecycle": 138, "test_trainer_bad_input": 138, "test_load": 136,
    "test_trainer_local": 127, "test_sharded_extract": 102, "test_publish_faults": 91,
    "test_fuzz": 66, "test_serving_rest": 62, "test_serving_grpc": 58, "test_conformance": 55,
    "test_quickstart": 41, "test_newcomer": 40, "test_trainer_s3": 38,
    "test_version_skew": 37, "test_store_admin": 36, "test_puller": 33,
    "test_batch_isolation": 30, "test_container_env": 29, "test_signing": 21,
    "test_quiet_cli": 16, "test_client": 15,
}


# Session fixtures worth building once per run rather than once per xdist worker, and the
# modules using them: those modules run on one worker, one after another (make test runs
# --dist loadfile, with the scheduler below). published_s3 is a full training run against
# the store (about a minute and a half on 2 cores). Collection checks the list.
SHARED_FIXTURE_MODULES = {
    "published_s3": tuple(f"tests/integration/test_{name}.py" for name in
                          ("security", "signing", "trainer_s3")),
}
GROUP_OF_MODULE = {m: f for f, modules in SHARED_FIXTURE_MODULES.items() for m in modules}


def _group(module: str) -> str:
    """A module's scheduling unit (module: its path in a node id): its shared fixture's
    group, or the module itself."""
    return GROUP_OF_MODULE.get(module, module)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, with the modules of a shared fixture handed out as one unit.
    (xdist_group marks cannot do it here: pytest 9 ignores the nodeid rewrite they rely on.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    # xdist otherwise re-sorts the units by their number of tests, which would put the
    # one-test modules (the load test, the end-to-end run) last: keep the order above.
    config.option.loadscopereorder = False
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid.split("::", 1)[0])

    return ModuleGroups(config, log)


def pytest_collection_modifyitems(config, items):
    """The slowest units first (modules, or a shared fixture's modules together; see
    MODULE_SECONDS); tests keep their order within a module. Refuses a module that uses a
    shared fixture without being listed in SHARED_FIXTURE_MODULES."""
    soak = config.getoption("--soak")
    chosen = [item for item in items if (item.get_closest_marker("soak") is not None) == soak]
    if len(chosen) < len(items):  # `make test` leaves the soak to `make soak`, and vice versa
        config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
        items[:] = chosen

    def module(item) -> str:
        return item.nodeid.split("::", 1)[0]

    for item in items:
        for fixture, modules in SHARED_FIXTURE_MODULES.items():
            if fixture in getattr(item, "fixturenames", ()) and module(item) not in modules:
                raise pytest.UsageError(f"{module(item)} uses {fixture}: add it to "
                                        "SHARED_FIXTURE_MODULES in tests/conftest.py")
    seconds: dict[str, int] = {}
    for item in {module(item): item for item in items}.values():
        slow = item.path.parent.name == "integration"  # every module named is one of these
        group = _group(module(item))
        seconds[group] = seconds.get(group, 0) + (MODULE_SECONDS.get(item.path.stem, 0)
                                                  if slow else 0)
    # Stable: a unit's modules stay together, each module's tests in order.
    items.sort(key=lambda item: (-seconds[_group(module(item))], _group(module(item))))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` as a user would; returns the finished process."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def write_key_pair(stem: Path) -> tuple[Path, Path]:
    """An EC P-256 key pair: <stem>.pem (private) and <stem>.pub (public)."""
    from contract.signing import make_key_pair

    private, public = stem.with_suffix(".pem"), stem.with_suffix(".pub")
    assert make_key_pair(private, public)
    return private, public


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory) -> dict[str, Path]:
    """The trainer's key pair, and another one (an attacker's, or last year's)."""
    root = tmp_path_factory.mktemp("keys")
    private, public = write_key_pair(root / "trainer")
    other_private, other_public = write_key_pair(root / "other")
    return {"private": private, "public": public, "other_private": other_private,
            "other_public": other_public}


@pytest.fixture(scope="session")
def sample_s3(seaweed):
    """2 classes x 50 sample images in S3 (the issue's acceptance dataset)."""
    uri = f"s3://{DATA_BUCKET}/sample-2x50"
    run_cli("trainer", "sample-data", "--output", uri, "--classes", "2", "--per-class", "50",
            "--quiet", check=True)
    return uri


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny VGG16-shaped base model file (tests/tiny_base.py), for `--base-model`."""
    from tests.tiny_base import write_tiny_vgg16

    return write_tiny_vgg16(tmp_path_factory.mktemp("base") / "tiny_vgg16.keras")


@pytest.fixture(scope="session")
def tiny_args(tiny_base) -> list[str]:
    """The trainer's flags for the tiny base."""
    return ["--base-model", str(tiny_base)]


@pytest.fixture(scope="session")
def published_s3(seaweed, sample_s3, signing_keys, tiny_args):
    """One full CLI training run: S3 data -> S3 models, S3 feature cache, the tiny base,
    signed with the trainer's key (SIGNING_KEY, as the Kubernetes Job sets it)."""
    models = f"s3://{MODELS_BUCKET}/{unique('run')}"
    cache = f"s3://{CACHE_BUCKET}/{unique('features')}"
    # float32: tests compare the report's validation scores with served ones to 1e-5, which
    # holds when the feature pass has the exported graph's arithmetic (PRECISION, as a
    # container would set it; runs reusing this cache pass --precision float32 too).
    proc = run_cli("trainer", "train", "--data", sample_s3, "--output", models,
                   "--model-name", "demo", *tiny_args, "--cache", cache,
                   "--version", "1", env={"SIGNING_KEY": str(signing_keys["private"]),
                                          "PRECISION": "float32"},
                   check=True)
    return {"models": models, "cache": cache, "data": sample_s3, "proc": proc,
            "version_uri": f"{models}/demo/1", "base_args": tiny_args}


class TinyModel:
    """A model trained in-process on 2x6 sample images, published locally as version 1,
    with the trainer's own predictions for every image (head on cached fc2 features)."""

    def __init__(self, result, root: Path):
        from trainer.features import FeatureCache, extract_features
        from trainer.model import head_model

        self.result = result
        self.root = root
        self.name = "tiny"
        self.base_path = root / "models" / self.name
        self.version_dir = self.base_path / "1"
        images = result.images
        cache = FeatureCache.of(open_location_(root / "cache"), result.base, "float32")
        features = extract_features(images, result.base, cache, batch_size=4, quiet=True)
        assert features.computed == 0  # all from the training run's cache
        probabilities = head_model(result.fit.head, result.base.feature_dim).predict(
            features.vectors, verbose=0)
        self.classes = images.classes
        self.files = list(zip(images.paths, images.contents, strict=True))
        self.expected = {path: probs for path, probs in
                         zip(images.paths, probabilities, strict=True)}

    def image(self, fmt: str) -> tuple[str, bytes]:
        """The first image whose file is in format `fmt` ("JPEG", "PNG", ...)."""
        import io

        from PIL import Image

        for path, data in self.files:
            with Image.open(io.BytesIO(data)) as im:
                if im.format == fmt:
                    return path, data
        raise LookupError(fmt)


def open_location_(path: Path):
    from contract.storage import open_location

    return open_location(str(path))


# Small enough for 2 CPU cores, big enough that each epoch has several shuffled batches.
TINY = dict(epochs=3, batch_size=4, val_split=0.34, seed=3,
            precision="float32")  # served scores are compared with the head's: same arithmetic


@pytest.fixture(scope="session")
def tiny(tiny_base) -> dict:
    """TrainConfig arguments of the in-process runs: TINY on the tiny base."""
    return {**TINY, "base_model": str(tiny_base)}


def train_tiny_model(root: Path, **config) -> TinyModel:
    from trainer.config import TrainConfig
    from trainer.job import run
    from trainer.sample_data import write_sample_data

    write_sample_data(str(root / "data"), num_classes=2, per_class=6, seed=11, quiet=True)
    config = TrainConfig(data=str(root / "data"), output=str(root / "models"),
                         model_name="tiny", cache=str(root / "cache"),
                         report_dir=str(root / "report"), version=1, quiet=True, **config)
    return TinyModel(run(config), root)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny) -> TinyModel:
    """The tiny dataset's model on the tiny base: what the serving tests serve."""
    return train_tiny_model(tmp_path_factory.mktemp("tiny"), **tiny)


@pytest.fixture(scope="session")
def vgg16_model(tmp_path_factory) -> TinyModel:
    """The same run on the full VGG16 (random weights): a real 0.5 GB export, for the tests
    where VGG16 itself is the subject (README, Tests)."""
    return train_tiny_model(tmp_path_factory.mktemp("vgg16"), **TINY, weights="none")


def link_version(source: Path, base_path: Path, version: int) -> Path:
    """Publish a copy of a version folder the way the puller does: assembled under a hidden
    name, then renamed into place atomically (files are hard links: fast, no extra disk)."""
    import os
    import shutil

    staging = base_path / f"{STAGING_PREFIX}{version}"
    shutil.copytree(source, staging, copy_function=os.link)
    final = base_path / str(version)
    os.rename(staging, final)
    return final
