"""The trainer CLI against a real S3 store (SeaweedFS): publish, cache, never overwrite."""

from __future__ import annotations

import hashlib
import json

import pytest

from contract.manifest import MANIFEST_FILE, parse_manifest
from contract.storage import open_location
from tests.conftest import CACHE_BUCKET, MODELS_BUCKET, run_cli, unique

pytestmark = pytest.mark.s3


def read_manifest(version_uri: str):
    return parse_manifest(open_location(version_uri).read_bytes(MANIFEST_FILE))


def test_full_run_publishes_a_verified_version_to_s3(published_s3):
    version = open_location(published_s3["version_uri"])
    manifest = read_manifest(published_s3["version_uri"])
    raw = manifest.raw
    assert raw["model_name"] == "demo" and raw["version"] == 1
    assert raw["classes"] == ["circle", "square"]
    assert raw["metrics"]["val_accuracy"] >= 0.9, raw["metrics"]
    assert raw["metrics"]["train_images"] == 80 and raw["metrics"]["val_images"] == 20
    assert raw["dataset"]["uri"] == published_s3["data"]

    # Every listed file is in the store with the listed size and content; nothing else is.
    stored = {e.path: e.size for e in version.list_files()}
    assert set(stored) == {f.path for f in manifest.files} | {MANIFEST_FILE}
    for f in manifest.files:
        assert stored[f.path] == f.size
        if f.size < 50_000_000:  # the 0.5 GB variables file: size is checked above
            assert hashlib.sha256(version.read_bytes(f.path)).hexdigest() == f.sha256, f.path
    assert {"saved_model.pb", "variables/variables.index", "assets/labels.txt",
            "assets.extra/tf_serving_warmup_requests", "assets.extra/report/metrics.json",
            "assets.extra/report/training_curves.png", "assets.extra/report/confusion_matrix.png",
            "assets.extra/report/config.json"} <= set(stored)
    assert "published s3://" in published_s3["proc"].stdout
    # ...and where its report and pictures are, on the next line.
    assert f"report: {published_s3['version_uri']}/assets.extra/report/ (metrics.json, " \
        "training_curves.png, confusion_matrix.png)" in published_s3["proc"].stdout


def test_second_run_takes_every_feature_from_the_cache(published_s3, tiny_base):
    models = f"s3://{MODELS_BUCKET}/{unique('second')}"  # the first run's folder stays as is
    # The same base, now read from the store: the cache is keyed by its weights, not by
    # where the file was.
    base_uri = f"s3://{MODELS_BUCKET}/{unique('bases')}/{tiny_base.name}"
    open_location(base_uri.rsplit("/", 1)[0]).write_bytes(tiny_base.name,
                                                          tiny_base.read_bytes())
    proc = run_cli("trainer", "train", "--data", published_s3["data"],
                   "--output", models, "--model-name", "demo", "--base-model", base_uri,
                   "--cache", published_s3["cache"], "--version", "2",
                   "--precision", "float32",
                   "--quiet", check=True)
    assert "features 100 cached / 0 computed" in proc.stdout
    # No key: published unsigned, and the summary line says so.
    assert "; unsigned;" in proc.stdout
    listed = {f.path for f in read_manifest(f"{models}/demo/2").files}
    assert "model.sig" not in listed and "model.sig" in {
        f.path for f in read_manifest(published_s3["version_uri"]).files}
    metrics = json.loads(open_location(models).read_bytes(
        "demo/2/assets.extra/report/metrics.json"))
    features = metrics["features"]
    first_features = json.loads(open_location(published_s3["version_uri"]).read_bytes(
        "assets.extra/report/metrics.json"))["features"]
    assert features.pop("precision") == first_features["precision"] == "float32"
    assert features.pop("precision_from") == first_features["precision_from"] == "--precision"
    assert features == {"cache": published_s3["cache"], "from_cache": 100, "computed": 0,
                        "spot_checked": 8}
    # Before publishing, the 20 validation images went through the base again (float32, as
    # served): their cached features are theirs, and the exported graph gives the head's
    # scores on the first 16 of them; the accuracy TF Serving will answer is recorded.
    check = metrics["cross_check"]
    assert check["images"] == 20 and check["export_checked"] == 16
    assert check["features_largest_difference"] <= check["features_tolerance"]
    assert check["export_largest_difference"] <= 1e-3
    assert abs(check["served_val_accuracy"] - metrics["validation"]["accuracy"]) <= 0.05
    # Same images, same weights, same seed: the same model.
    first, second = read_manifest(published_s3["version_uri"]), read_manifest(
        f"{models}/demo/2")
    assert first.raw["metrics"] == second.raw["metrics"]
    assert second.raw["base_model"]["source"] == base_uri
    assert second.raw["base_model"]["weights_sha256"] == \
        first.raw["base_model"]["weights_sha256"]


def test_an_existing_version_is_never_overwritten(published_s3):
    before = open_location(published_s3["version_uri"]).read_bytes(MANIFEST_FILE)
    proc = run_cli("trainer", "train", "--data", published_s3["data"],
                   "--output", published_s3["models"], "--model-name", "demo",
                   *published_s3["base_args"], "--cache", published_s3["cache"], "--version", "1",
                   "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert "version 1 of model 'demo' already exists" in proc.stderr
    assert open_location(published_s3["version_uri"]).read_bytes(MANIFEST_FILE) == before


def test_wrong_credentials_exit_3_with_one_line(published_s3):
    proc = run_cli("trainer", "train", "--data", published_s3["data"],
                   "--output", f"s3://{MODELS_BUCKET}/{unique('denied')}",
                   "--model-name", "demo", "--weights", "none",
                   "--cache", f"s3://{CACHE_BUCKET}/x", "--quiet",
                   env={"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    assert proc.returncode == 3
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "access denied" in error_lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_bucket_is_bad_input(seaweed):
    proc = run_cli("trainer", "train", "--data", "s3://no-such-bucket-here/data",
                   "--output", f"s3://{MODELS_BUCKET}/x", "--model-name", "demo",
                   "--weights", "none", "--quiet")
    assert proc.returncode == 2
    assert "error: cannot list s3://no-such-bucket-here/data: bucket does not exist" \
        in proc.stderr

