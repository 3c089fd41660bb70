"""The model lifecycle with a real S3 store, real trained versions and a real server:
`trainer evaluate`, `trainer promote`, `serving rollback`, and the puller and `serving local`
honouring the labels (models.config with version_labels) under a steady stream of requests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from contract.labels import Labels
from contract.model_folder import ModelFolder
from contract.names import IMAGE_BYTES_INPUT, LABELS_OBJECT, SERVING_DEFAULT
from contract.storage import open_location
from serving.server_config import Served, read_state
from tests.conftest import MODELS_BUCKET, REPO, run_cli, unique
from tools.model_server import LocalServer

pytestmark = [pytest.mark.s3, pytest.mark.slow]

POLL_S = 1  # the puller's --interval and the server's config and file-system polls


def one_error(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    return line


@pytest.fixture(scope="module")
def lifecycle(seaweed, tmp_path_factory, tiny_base):
    """Two trained versions of `m` in S3: 1 on the sample data (with a test split), 2 on the
    same images with the class folders swapped: a candidate clearly worse on real data.
    Trained in this process (the trainer's CLI is tested elsewhere; here what matters is
    what it published)."""
    from trainer.config import TrainConfig
    from trainer.job import run
    from trainer.sample_data import write_sample_data

    tmp = tmp_path_factory.mktemp("lifecycle")
    data, swapped = tmp / "data", tmp / "swapped"
    write_sample_data(str(data), num_classes=2, per_class=10, seed=5, quiet=True)
    first, second = sorted(p.name for p in data.iterdir())
    shutil.copytree(data / first, swapped / second)
    shutil.copytree(data / second, swapped / first)
    models = f"s3://{MODELS_BUCKET}/{unique('lifecycle')}"
    common = dict(output=models, model_name="m", base_model=str(tiny_base),
                  cache=str(tmp / "cache"), epochs=10, learning_rate=0.01, batch_size=4,
                  seed=1, quiet=True)
    run(TrainConfig(data=str(data), version=1, test_split=0.2, **common))
    run(TrainConfig(data=str(swapped), version=2, **common))
    yield {"models": models, "source": f"{models}/m", "data": data, "tmp": tmp}
    shutil.rmtree(tmp, ignore_errors=True)  # models and caches: not kept to the end


def set_labels(source: str, labels: dict[str, int], history: dict[str, list[int]]) -> None:
    open_location(source).write_bytes(LABELS_OBJECT,
                                      Labels("m", labels, history).to_bytes())


def test_evaluate_agrees_with_the_trainers_test_metrics(lifecycle, tmp_path):
    from PIL import Image

    from trainer.data import load_images, split_with_test

    # The trainer's held-out test images (its split, same seed), as a folder of their own.
    images = load_images(str(lifecycle["data"]), quiet=True)
    _, _, test = split_with_test(images.labels, 0.2, 0.2, 1)
    held_out = tmp_path / "test"
    for i in test:
        target = held_out / images.paths[i]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(images.contents[i])
    report = tmp_path / "report"
    proc = run_cli("trainer", "evaluate", "--model", f"{lifecycle['source']}/1", "--data",
                   str(held_out), "--baseline", "2", "--report-dir", str(report), "--quiet")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((report / "metrics.json").read_text())
    measured = metrics["candidate"]
    trained = json.loads(open_location(f"{lifecycle['source']}/1").read_bytes(
        "assets.extra/report/metrics.json"))["test"]
    assert measured["images"] == len(test) and measured["unclassified"] == []
    assert measured["accuracy"] == trained["accuracy"]
    assert measured["confusion_matrix"] == trained["confusion_matrix"]
    for name, figures in trained["per_class"].items():
        assert measured["per_class"][name] == pytest.approx(figures)
    assert measured["loss"] == pytest.approx(trained["loss"], abs=1e-4)
    assert f"version 1 of m (version 1): accuracy {trained['accuracy']:.4f}" in proc.stdout
    # The baseline on the same images, and the difference per metric on the command line.
    d = metrics["difference"]
    assert (d["candidate"], d["baseline"], d["images"]) == (1, 2, len(test))
    assert d["accuracy"] == pytest.approx(trained["accuracy"]
                                          - metrics["baseline"]["accuracy"])
    assert f"difference (1 - 2): accuracy {d['accuracy']:+.4f} (95% CI" in proc.stdout
    for name, diff in d["per_class"].items():
        assert f"  {name}: precision {diff['precision']:+.4f}, recall {diff['recall']:+.4f}" \
            in proc.stdout
    # The pictures open; the HTML page carries its images inline (one file to send).
    for picture in ("confusion_matrix.png", "misclassified.png"):
        with Image.open(report / picture) as im:
            assert im.format == "PNG" and im.size[0] > 100
    page = (report / "misclassified.html").read_text()
    wrong = round((1 - trained["accuracy"]) * len(test))
    assert page.count("<figure>") == wrong
    assert page.count("data:image/jpeg;base64,") == wrong and "http" not in page


@pytest.mark.parametrize("identity", ["kept", "deleted"])
def test_evaluate_takes_class_order_from_the_model_not_the_manifest(lifecycle, identity):
    """Issue 27: the same bytes with the classes reversed in the (unsigned) manifest read as
    accuracy 1 - a. The identity file the trainer writes says otherwise; without it, the
    graph's own `classes` output does. Either way: exit 2, nothing scored."""
    from contract.manifest import MANIFEST_FILE, parse_manifest
    from contract.names import IDENTITY_FILE

    source = open_location(f"{lifecycle['source']}/1")
    # Copied as it is (model m, version 1) into another models folder of the bucket.
    target = open_location(f"s3://{MODELS_BUCKET}/{unique('reversed')}/m/1")
    manifest = parse_manifest(source.read_bytes(MANIFEST_FILE))
    raw = dict(manifest.raw, classes=manifest.classes[::-1])
    if identity == "deleted":
        raw["files"] = [f for f in raw["files"] if f["path"] != IDENTITY_FILE]
    for f in raw["files"]:
        target.write_bytes(f["path"], source.read_bytes(f["path"]))
    target.write_bytes(MANIFEST_FILE, json.dumps(raw).encode())
    proc = run_cli("trainer", "evaluate", "--model", target.uri, "--data",
                   str(lifecycle["data"]), "--quiet")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = one_error(proc)
    reversed_ = manifest.classes[::-1]
    if identity == "kept":
        assert f"the manifest's classes {reversed_} differ from {manifest.classes} in " \
               "identity.json" in line
    else:
        assert f"the manifest's classes {reversed_} differ from the model's own " \
               f"{manifest.classes}" in line
    assert "accuracy" not in proc.stdout


def test_promote_moves_stable_only_for_a_candidate_that_is_no_worse(lifecycle, tmp_path):
    source = lifecycle["source"]
    set_labels(source, {"stable": 2}, {})  # the worse version is live
    proc = run_cli("trainer", "promote", "--source", source, "--candidate", "1", "--data",
                   str(lifecycle["data"]), "--report-dir", str(tmp_path / "first"))
    assert proc.returncode == 0, proc.stderr
    assert "promoted: stable 2 -> 1 (m; accuracy" in proc.stdout
    labels = ModelFolder(source).labels()
    assert labels.labels == {"stable": 1} and labels.history == {"stable": [2]}
    before = open_location(source).read_bytes(LABELS_OBJECT)

    proc = run_cli("trainer", "promote", "--source", source, "--candidate", "2", "--data",
                   str(lifecycle["data"]), "--report-dir", str(tmp_path / "second"))
    assert proc.returncode == 4, proc.stderr
    line = one_error(proc)
    assert "not promoted: version 2 scores accuracy" in line
    assert "below stable version 1" in line and "stable stays at 1" in line
    assert open_location(source).read_bytes(LABELS_OBJECT) == before
    # The evaluation behind it: both versions on the same images, and the difference with
    # its bootstrap interval (trained on swapped labels: surely worse).
    metrics = json.loads((tmp_path / "second" / "metrics.json").read_text())
    d = metrics["difference"]
    assert (d["candidate"], d["baseline"], d["images"]) == (2, 1, 20)
    assert d["accuracy"] == pytest.approx(metrics["candidate"]["accuracy"]
                                          - metrics["baseline"]["accuracy"])
    low, high = d["accuracy_ci"]
    assert low <= d["accuracy"] <= high < 0


def test_promote_of_a_version_that_does_not_exist_is_exit_2_and_moves_nothing(lifecycle):
    set_labels(lifecycle["source"], {"stable": 1}, {})
    proc = run_cli("trainer", "promote", "--source", lifecycle["source"], "--candidate", "7",
                   "--data", str(lifecycle["data"]))
    assert proc.returncode == 2
    assert "version 7 of m is not published" in one_error(proc)
    assert ModelFolder(lifecycle["source"]).labels().labels == {"stable": 1}


# -- the puller and the server follow the labels -------------------------------------------
class Clients:
    """`n` gRPC clients, each asking for label `stable` in a loop; every answer's version
    (or failure) is recorded with the times its request was sent and its answer came."""

    def __init__(self, target: str, image: bytes, n: int = 4):
        self.target, self.image = target, image
        self.answers: list[tuple[float, float, int]] = []  # (sent, answered, version)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        from serving import protos
        from serving.client import GrpcClient

        with GrpcClient(self.target, timeout=30) as client:
            while not self._stop.is_set():
                request = protos.PredictRequest()
                request.model_spec.name = "m"
                request.model_spec.version_label = "stable"
                request.model_spec.signature_name = SERVING_DEFAULT
                protos.strings_tensor([self.image], request.inputs[IMAGE_BYTES_INPUT])
                sent = time.monotonic()
                try:
                    response = client._call(protos.PREDICT, request)
                    version = response.model_spec.version.value
                    self.answers.append((sent, time.monotonic(), version))
                except Exception as e:  # noqa: BLE001 - every failure is the finding
                    self.failures.append(f"{type(e).__name__}: {e}")

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def first_answer_from(self, version: int, after: float, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [t for t, _, v in list(self.answers) if v == version and t >= after]
            if hits:
                return min(hits)
            time.sleep(0.05)
        raise AssertionError(f"no answer from version {version} within {timeout} s; last "
                             f"answers {self.answers[-5:]}, failures {self.failures[:3]}")

    def only_after_first(self, version: int, after: float) -> set[int]:
        """The versions that answered requests sent once an answer from `version` had come
        back (the server had switched by then). Send times alone would not do: of two
        clients' requests, the one sent later can reach the server first."""
        switched = min(t for _, t, v in self.answers if v == version and t >= after)
        return {v for t, _, v in self.answers if t > switched}


def wait_for(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def stack(lifecycle):
    """`serving pull --watch --model-config` beside `serving local` re-reading that config,
    as the Kubernetes pod and the compose stack run them; stable=2, rollback target 1."""
    source, tmp = lifecycle["source"], lifecycle["tmp"]
    set_labels(source, {"stable": 2}, {"stable": [1]})
    volume = tmp / "volume"
    config = volume / "models.config"
    puller_log = (tmp / "puller.log").open("wb")
    puller = subprocess.Popen(
        [sys.executable, "-m", "serving", "pull", "--source", source, "--dest",
         str(volume / "m"), "--model-config", str(config), "--watch", "--interval",
         str(POLL_S)], stdout=puller_log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for(lambda: (state := read_state(config)) is not None
                 and state.versions == (1, 2), "the puller's first models.config")
        server = LocalServer(["--model-config-file", str(config),
                              f"--model_config_file_poll_wait_seconds={POLL_S}",
                              "--allow_version_labels_for_unavailable_models=true",
                              "--file-system-poll-wait-seconds", str(POLL_S)],
                             tmp / "server.log").start(wait_for_model="m")
        yield {"server": server, "config": config, "puller_log": tmp / "puller.log",
               "source": source, "image": next((lifecycle["data"]).rglob("*.jpg"))
               .read_bytes()}
        assert server.stop() == 0, server.log_text()[-3000:]
    finally:
        puller.terminate()
        puller.wait(timeout=30)
        puller_log.close()


def test_rollback_under_load_switches_within_a_poll_and_fails_no_request(stack):
    from serving.client import GrpcClient

    server = stack["server"]
    with GrpcClient(server.grpc_target) as client:
        wait_for(lambda: {v.version for v in client.status("m") if v.state == "AVAILABLE"}
                 == {1, 2}, "versions 1 and 2 AVAILABLE")
    with Clients(server.grpc_target, stack["image"]) as clients:
        assert clients.first_answer_from(2, after=0) > 0  # stable is 2 to begin with
        time.sleep(1)
        proc = run_cli("serving", "rollback", "--source", stack["source"])
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "rolled back: stable 2 -> 1 (m)"
        rolled_back = time.monotonic()
        switched = clients.first_answer_from(1, after=rolled_back)
        time.sleep(2)
    assert clients.failures == []
    # Once version 1 has answered, every request sent later is answered by it.
    assert clients.only_after_first(1, rolled_back) == {1}
    # One puller interval plus one config poll of the server, with room for a busy machine.
    assert switched - rolled_back < 2 * POLL_S + 5, switched - rolled_back
    print(f"rollback reached clients after {switched - rolled_back:.2f} s, "
          f"{len(clients.answers)} answers, 0 failed")


def test_a_label_moving_to_a_version_not_loaded_switches_in_two_steps_with_no_failure(
        stack):
    """After the rollback only version 1 is served. Moving stable to 2 again makes the
    puller list 2 first (the server loads it) and move the label a sync later: TF Serving
    refuses a label in use on a version it has not loaded."""
    config = stack["config"]
    assert read_state(config).versions == (1,)
    with Clients(stack["server"].grpc_target, stack["image"]) as clients:
        moved = time.monotonic()
        proc = run_cli("serving", "label", "set", "--source", stack["source"], "stable=2")
        assert proc.returncode == 0, proc.stderr
        switched = clients.first_answer_from(2, after=moved)
        time.sleep(1)
    assert clients.failures == []
    assert clients.only_after_first(2, moved) == {2}
    log = Path(stack["puller_log"]).read_text()
    assert "model server config: versions [1, 2], labels stable=1 (a label moves on the next " \
        "sync" in log
    assert read_state(config) == Served((1, 2), {"stable": 2})
    print(f"stable reached a version loaded on demand after {switched - moved:.2f} s")


@pytest.mark.parametrize("hostile", [
    b"{not json",
    json.dumps({"format": 1, "model_name": "m", "labels": {"stable": 99}}).encode(),
], ids=["unparseable", "a version that does not exist"])
def test_hostile_labels_change_nothing_the_server_serves(stack, hostile):
    config, server = stack["config"], stack["server"]
    before = read_state(config)
    open_location(stack["source"]).write_bytes(LABELS_OBJECT, hostile)
    with Clients(server.grpc_target, stack["image"], n=2) as clients:
        time.sleep(3 * POLL_S + 1)  # three puller syncs and server polls
    assert clients.failures == []
    assert {v for *_, v in clients.answers} == {before.labels["stable"]}
    after = read_state(config)
    assert after.labels == before.labels
    log = Path(stack["puller_log"]).read_text()
    if hostile.startswith(b"{not"):
        assert "labels refused: _LABELS.json is not JSON" in log
        assert after == before
    else:
        assert "label stable names version 99 of m, which is not installed; keeps version" \
            in log
