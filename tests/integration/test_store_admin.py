"""Labels and retention in a real S3 store: `serving label set|rm|ls` and `serving gc`."""

from __future__ import annotations

import json

import pytest

from contract.labels import LabelsError, parse_labels
from contract.manifest import MANIFEST_FILE
from contract.model_folder import ModelFolder
from contract.names import LABELS_OBJECT
from contract.storage import S3Location, open_location
from tests.conftest import MODELS_BUCKET, run_cli, unique
from tests.integration.test_puller import publish_fake

pytestmark = pytest.mark.s3


@pytest.fixture
def models(seaweed, tmp_path) -> str:
    """<models>/m with versions 1 to 5 published."""
    uri = f"s3://{MODELS_BUCKET}/{unique('admin')}"
    for version in range(1, 6):
        publish_fake(tmp_path, uri, "m", version)
    return uri


def serving(*args: str):
    return run_cli("serving", *args, timeout=120)


def one_error(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    return line


def test_labels_are_set_listed_and_removed_in_one_object(models):
    source = f"{models}/m"
    proc = serving("label", "set", "--source", source, "stable=3", "canary=5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["canary=5", "stable=3"]
    stored = json.loads(open_location(source).read_bytes(LABELS_OBJECT))
    assert stored == {"format": 1, "model_name": "m", "labels": {"canary": 5, "stable": 3}}
    proc = serving("label", "set", "--source", source, "stable=4")  # moves one, keeps others
    assert proc.stdout.splitlines() == ["canary=5", "stable=4  (before: 3)"]
    assert serving("label", "ls", "--source", source).stdout.splitlines() == [
        "canary=5", "stable=4  (before: 3)"]
    proc = serving("label", "rm", "--source", source, "canary")
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["stable=4  (before: 3)"]


def test_rollback_returns_stable_to_its_previous_version_once(models):
    source = f"{models}/m"
    for version in (2, 4):
        assert serving("label", "set", "--source", source, f"stable={version}").returncode == 0
    proc = serving("rollback", "--source", source)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "rolled back: stable 4 -> 2 (m)"
    assert ModelFolder(source).labels().labels == {"stable": 2}
    proc = serving("rollback", "--source", source)  # 2 was the first: nothing before it
    assert proc.returncode == 2
    assert "label 'stable' has no previous version to roll back to" in one_error(proc)
    assert ModelFolder(source).labels().labels == {"stable": 2}
    proc = serving("rollback", "--source", source, "--label", "canary")
    assert proc.returncode == 2 and "no label canary on m" in one_error(proc)


def test_rollback_refuses_a_previous_version_that_no_longer_verifies(models):
    source = f"{models}/m"
    for version in (2, 4):
        assert serving("label", "set", "--source", source, f"stable={version}").returncode == 0
    open_location(f"{source}/2").delete([MANIFEST_FILE])
    proc = serving("rollback", "--source", source)
    assert proc.returncode == 2
    assert "version 2 of m is not published" in one_error(proc)
    assert ModelFolder(source).labels().labels == {"stable": 4}


@pytest.mark.parametrize("args, code, message", [
    (["set", "stable=9"], 2, "version 9 of m is not published"),
    (["set", "stable"], 2, "expected LABEL=VERSION"),
    (["set", "Stable=3"], 2, "label 'Stable': use a lower-case letter"),
    (["set", "stable=0"], 2, "not a version number"),
    (["rm", "nope"], 2, "no label nope on m"),
])
def test_bad_label_commands_are_one_line_and_exit_2(models, args, code, message):
    proc = serving("label", args[0], "--source", f"{models}/m", *args[1:])
    assert proc.returncode == code, proc.stderr
    assert message in one_error(proc)


def test_only_versions_that_verify_can_be_labelled(models, signing_keys):
    remote = open_location(f"{models}/m/2")
    remote.write_bytes("saved_model.pb", b"shorter")  # not the size the manifest says
    proc = serving("label", "set", "--source", f"{models}/m", "stable=2")
    assert proc.returncode == 2
    assert "version 2 of m: saved_model.pb has 7 bytes, the manifest says" in one_error(proc)
    proc = serving("label", "set", "--source", f"{models}/m", "--verify-key",
                   str(signing_keys["public"]), "stable=3")
    assert proc.returncode == 2
    assert "version 3 of m: signature: unsigned (no model.sig)" in one_error(proc)
    assert not open_location(f"{models}/m").exists(LABELS_OBJECT)


HOSTILE = {
    "not json": b"{oops",
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "another model": json.dumps({"format": 1, "model_name": "x", "labels": {}}).encode(),
    "a version that is not a number": json.dumps(
        {"format": 1, "model_name": "m", "labels": {"stable": "3"}}).encode(),
    "a 2**64 version": json.dumps(
        {"format": 1, "model_name": "m", "labels": {"stable": 2**64}}).encode(),
    "an unknown field": json.dumps(
        {"format": 1, "model_name": "m", "labels": {}, "extra": 1}).encode(),
    "too big": b" " * (70 * 1024),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_label_objects_are_refused_and_gc_deletes_nothing(models, case):
    with pytest.raises(LabelsError):
        parse_labels(HOSTILE[case], "m")
    open_location(f"{models}/m").write_bytes(LABELS_OBJECT, HOSTILE[case])
    for args in (["label", "ls"], ["gc", "--keep", "1"]):
        proc = serving(*args, "--source", f"{models}/m")
        assert proc.returncode == 2, (case, proc.stderr)
        assert f"{LABELS_OBJECT}" in one_error(proc)
    assert ModelFolder(f"{models}/m").versions() == [5, 4, 3, 2, 1]


def test_gc_keeps_what_rollback_needs(models):
    source = f"{models}/m"
    for version in (1, 2):  # stable=2, and 1 is what a rollback returns to
        assert serving("label", "set", "--source", source, f"stable={version}").returncode == 0
    proc = serving("gc", "--source", source, "--keep", "1")
    assert proc.returncode == 0, proc.stderr
    assert "kept [5] (newest 1), [1, 2] (labelled); deleted [4, 3]" in proc.stdout


def test_gc_keeps_the_newest_and_the_labelled_and_deletes_manifest_first(models, monkeypatch):
    source = f"{models}/m"
    assert serving("label", "set", "--source", source, "stable=2").returncode == 0
    dry = serving("gc", "--source", source, "--keep", "2", "--dry-run")
    assert dry.returncode == 0 and "would delete [3, 1]" in dry.stdout
    assert ModelFolder(source).versions() == [5, 4, 3, 2, 1]
    deletions: list[list[str]] = []
    real_delete = S3Location.delete

    def spy(self, paths):
        paths = list(paths)
        deletions.append([f"{self.uri.rsplit('/', 1)[-1]}/{p}" for p in paths])
        return real_delete(self, paths)

    monkeypatch.setattr(S3Location, "delete", spy)
    plan = ModelFolder(source).gc(keep=2, dry_run=False)
    assert (plan.kept, plan.labelled, plan.deleted) == ([5, 4], [2], [3, 1])
    # Each version: its manifest alone first, then the rest.
    assert len(deletions) == 4
    assert deletions[0] == [f"3/{MANIFEST_FILE}"] and deletions[2] == [f"1/{MANIFEST_FILE}"]
    for rest, version in ((deletions[1], "3"), (deletions[3], "1")):
        assert rest and all(p.startswith(f"{version}/") for p in rest)
        assert f"{version}/{MANIFEST_FILE}" not in rest
    # Nothing is left of 3 and 1 (SeaweedFS may still list their empty folders).
    for gone in (1, 3):
        assert open_location(f"{source}/{gone}").list_files() == []
    assert [v for v in ModelFolder(source).versions()
            if open_location(f"{source}/{v}").list_files()] == [5, 4, 2]
    assert open_location(f"{source}/2").exists(MANIFEST_FILE)
