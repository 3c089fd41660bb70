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


def _stop_like_ctrl_c(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


_started = {}


def pytest_configure(config):
    """SIGTERM (CI cancelling a job, `timeout`, `kill`) stops a run as Ctrl-C does: fixtures
    tear down, so the stores and servers they started stop and scratch space is cleaned.
    (Each store and server also dies with the process that started it: tools/seaweed.py,
    with_parent.)"""
    import signal
    import time

    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    _started.update(config=config, at=time.monotonic(), modules=set())


def pytest_runtest_logstart(nodeid, location):
    """Progress between the dots: a line as each test module starts (the long ones come
    first, and their first dot can be a minute away). In the controlling process only."""
    import time

    config = _started.get("config")
    if config is None or os.environ.get("PYTEST_XDIST_WORKER") or \
            config.get_verbosity() > 0:
        return
    module = nodeid.split("::")[0]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if module in _started["modules"] or reporter is None:
        return
    _started["modules"].add(module)
    elapsed = int(time.monotonic() - _started["at"])
    if reporter._tw.width_of_current_line:  # after a row of dots
        reporter.write("\n")
    reporter.write_line(f"[{elapsed // 60}:{elapsed % 60:02d}] {module}")


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


def pytest_collection_modifyitems(config, items):
    """`make test` leaves the soak tests to `make soak` (pytest --soak), and vice versa.

    Modules marked `slow` come first, the rest after, each group in collection order (a
    stable sort: a module's tests keep their order). `make test` runs pytest-xdist with
    --dist loadfile --no-loadscope-reorder, so each worker takes the next module as it
    finishes one: the long modules start early and the many short ones even out the end."""
    soak = config.getoption("--soak")
    chosen = [item for item in items if (item.get_closest_marker("soak") is not None) == soak]
    if len(chosen) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
        items[:] = chosen
    items.sort(key=lambda item: not _module_marked(item, "slow"))


def _module_marked(item, name: str) -> bool:
    """The mark is on the module (pytestmark), not only on some of its tests."""
    marks = getattr(item.module, "pytestmark", [])
    return any(m.name == name for m in (marks if isinstance(marks, list) else [marks]))


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
    from trainer.sample_data import write_sample_data

    uri = f"s3://{DATA_BUCKET}/sample-2x50"
    write_sample_data(uri, num_classes=2, per_class=50, seed=0, quiet=True)  # the CLI's default
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
