"""Bad input to `trainer train`: one clear line, the documented exit code, nothing published."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from trainer.cli import cli
from trainer.sample_data import write_sample_data

pytestmark = pytest.mark.slow


@pytest.fixture
def train(tiny_args):
    """`trainer train --quiet` on the tiny base, in-process."""
    def invoke(*args: str):
        return CliRunner().invoke(cli, ["train", *tiny_args, "--quiet", *args])
    return invoke


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def jpeg_bytes(colour=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    """A JPEG cut in the middle of its scan data: its header is fine, its pixels are not."""
    import numpy as np

    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    data = buf.getvalue()
    return data[: len(data) // 2]


@pytest.fixture
def small_data(tmp_path) -> Path:
    root = tmp_path / "data"
    write_sample_data(str(root), num_classes=2, per_class=3, seed=5, quiet=True)
    return root


def common(tmp_path: Path, data: Path | str) -> list[str]:
    return ["--data", str(data), "--output", str(tmp_path / "models"), "--model-name", "m",
            "--cache", str(tmp_path / "cache")]


def test_missing_location(train, tmp_path):
    result = train(*common(tmp_path, tmp_path / "nope"))
    assert result.exit_code == 2
    assert "location does not exist or is empty" in error_line(result)
    assert str(tmp_path / "nope") in error_line(result)


def test_empty_location(train, tmp_path):
    (tmp_path / "empty").mkdir()
    result = train(*common(tmp_path, tmp_path / "empty"))
    assert result.exit_code == 2
    assert "does not exist or is empty" in error_line(result)


def test_single_class(train, tmp_path, small_data):
    shutil.rmtree(small_data / "square")
    result = train(*common(tmp_path, small_data))
    assert result.exit_code == 2
    assert "need at least 2 class folders with images, found 1 (circle)" in error_line(result)


def test_class_with_too_few_images(train, tmp_path, small_data):
    for p in sorted((small_data / "square").iterdir())[1:]:
        p.unlink()
    result = train(*common(tmp_path, small_data))
    assert result.exit_code == 2
    assert "too few in square: 1" in error_line(result)


def test_class_left_with_too_few_after_undecodable_images_are_dropped(train, tmp_path,
                                                                       small_data):
    # Truncated JPEGs pass the header check but TensorFlow cannot decode them.
    for p in sorted((small_data / "square").iterdir())[1:]:
        p.unlink()
    (small_data / "square" / "cut.jpg").write_bytes(truncated_jpeg())
    result = train(*common(tmp_path, small_data))
    assert result.exit_code == 2
    assert "too few in square: 1" in error_line(result)
    assert not (tmp_path / "models").exists()


def test_bad_and_odd_files_are_skipped_and_listed(train, tmp_path, small_data):
    sq = small_data / "square"
    (sq / "notes.txt").write_text("not an image")
    (sq / "empty.jpg").write_bytes(b"")
    (sq / "fake.png").write_bytes(b"this is not a png")
    (sq / "cut.jpg").write_bytes(truncated_jpeg())
    (small_data / "stray.jpg").write_bytes(jpeg_bytes())
    nested = small_data / "circle" / "more" / "deeper"
    nested.mkdir(parents=True)
    (nested / "ünï cödé name.JPG").write_bytes(jpeg_bytes((250, 20, 20)))
    (small_data / "circle" / "link.jpg").symlink_to(sorted((small_data / "circle").glob(
        "*.jpg"))[0])
    (small_data / "circle" / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, "PNG")  # 144 MP declared in a few KB
    (sq / "huge.png").write_bytes(bomb.getvalue())
    webp = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 20, 200)).save(webp, "WEBP")
    (sq / "really-webp.jpg").write_bytes(webp.getvalue())  # decodable, but not the contract

    result = train(*common(tmp_path, small_data), "--report-dir", str(tmp_path / "report"),
                   "--epochs", "1")
    assert result.exit_code == 0, result.stderr + result.stdout
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    reasons = {s["path"]: s["reason"] for s in metrics["skipped"]}
    assert reasons == {
        "square/notes.txt": "not an image file extension",
        "square/empty.jpg": "empty file",
        "square/fake.png": "not a JPEG/PNG/GIF/BMP image",
        "square/really-webp.jpg": "not a JPEG/PNG/GIF/BMP image",  # as the server says
        "square/cut.jpg": "cannot be decoded by TensorFlow (corrupt or truncated)",
        "stray.jpg": "not inside a class folder",
        "circle/broken.jpg": "unreadable (missing or broken link)",
        "square/huge.png": "image too large (more than 100000000 pixels declared)",
    }
    # Nested folders belong to their top-level class; symlinked files are read through.
    assert metrics["images"]["per_class"]["circle"]["train"] + \
        metrics["images"]["per_class"]["circle"]["val"] == 5
    assert "8 skipped" in result.stdout


@pytest.mark.vgg16  # builds VGG16 to load the file into
def test_unreadable_weights_file(tmp_path, small_data):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    result = CliRunner().invoke(cli, ["train", *common(tmp_path, small_data), "--weights",
                                      str(bad), "--quiet"])
    assert result.exit_code == 2
    assert f"--weights {bad}: not a VGG16 weights file" in error_line(result)


def test_missing_weights_file(tmp_path, small_data):
    result = CliRunner().invoke(cli, ["train", *common(tmp_path, small_data), "--weights",
                                      str(tmp_path / "nope.h5"), "--quiet"])
    assert result.exit_code == 2
    assert "no such file" in error_line(result)


def test_weights_must_name_a_keras_file(tmp_path, small_data):
    result = CliRunner().invoke(cli, ["train", *common(tmp_path, small_data), "--weights",
                                      "resnet", "--quiet"])
    assert result.exit_code == 2
    assert "expected 'imagenet', 'auto', 'none', or a Keras weights file" in error_line(result)


def base_file(path: Path, build) -> Path:
    """A Keras model file made by `build(keras)`: a base a user might pass by mistake."""
    import keras

    build(keras).save(path)
    return path


def no_fc2(keras):
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(8, name="fc1")(x))


def wrong_input(keras):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(8, name="fc2")(x))


def spatial_fc2(keras):
    inputs = keras.Input((224, 224, 3))
    return keras.Model(inputs, keras.layers.Conv2D(4, 3, name="fc2")(inputs))


@pytest.mark.parametrize("build, message", [
    (no_fc2, "it has no layer named 'fc2'"),
    (wrong_input, "its input shape is (None, 32, 32, 3)"),
    (spatial_fc2, "its 'fc2' layer gives shape (None, 222, 222, 4)"),
    (None, "not a Keras model file this Keras can load"),
])
def test_a_base_model_without_vgg16s_interface_is_refused(tmp_path, small_data, build,
                                                          message):
    path = tmp_path / "base.keras"
    if build is None:
        path.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        base_file(path, build)
    result = CliRunner().invoke(cli, ["train", *common(tmp_path, small_data), "--base-model",
                                      str(path), "--quiet"])
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith(f"error: --base-model {path}: ") and message in line, line
    if build is not None:
        assert "a base needs VGG16's interface" in line
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("args, message", [
    (["--base-model", "resnet50"], "--base-model resnet50: expected 'vgg16' or a Keras model "
                                   "file ending in .keras, .h5, .hdf5"),
    (["--base-model", "base.keras", "--weights", "none"],
     "--weights none: a --base-model file carries its own weights"),
    (["--base-model", "nope.keras"], "--base-model nope.keras: no such file"),
])
def test_base_model_usage_errors(tmp_path, small_data, args, message):
    result = CliRunner().invoke(cli, ["train", *common(tmp_path, small_data), *args,
                                      "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in error_line(result)


@pytest.mark.parametrize("args, message", [
    (["--model-name", "bad/name"], "--model-name 'bad/name'"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--val-split", "1"], "--val-split must be between 0 and 1"),
    (["--min-val-accuracy", "1.5"], "--min-val-accuracy must be between 0 and 1"),
    (["--version", "0"], "--version must be a positive integer"),
    (["--min-test-accuracy", "0.8"], "--min-test-accuracy needs a test set"),
    (["--test-split", "0.85"], "--test-split must be at least 0 and leave images to train"),
    (["--test-split", "-0.1"], "--test-split must be at least 0"),
])
def test_bad_options(train, tmp_path, small_data, args, message):
    result = train(*common(tmp_path, small_data), *args)
    assert result.exit_code == 2
    assert message in error_line(result)


def test_cache_and_no_cache_exclude_each_other(train, tmp_path, small_data):
    result = train(*common(tmp_path, small_data), "--no-cache")
    assert result.exit_code == 2
    assert "--cache and --no-cache exclude each other" in result.stderr


def test_bfloat16_needs_the_cached_feature_pass(train, tmp_path, small_data):
    args = ["--data", str(small_data), "--output", str(tmp_path / "models"), "--model-name",
            "m", "--no-cache"]
    result = train(*args, "--precision", "bfloat16")
    assert result.exit_code == 2
    assert "--precision bfloat16 applies to the cached feature pass; --no-cache trains the " \
        "whole network in float32" in error_line(result)
    result = train(*common(tmp_path, small_data), "--precision", "float16")
    assert result.exit_code == 2 and "'float16' is not one of" in result.stderr
    assert not (tmp_path / "models").exists()


def test_accuracy_gate_publishes_nothing_and_exits_4(train, tmp_path):
    # Both classes hold the very same images: no model can beat 50% on them.
    data = tmp_path / "data"
    write_sample_data(str(data), num_classes=2, per_class=4, seed=1, quiet=True)
    shutil.rmtree(data / "square")
    shutil.copytree(data / "circle", data / "square")
    result = train(*common(tmp_path, data), "--min-val-accuracy", "0.9", "--epochs", "1",
                   "--report-dir", str(tmp_path / "report"))
    assert result.exit_code == 4  # not 1: that is left to crashes, which a Job retries
    assert "validation accuracy 0.5000 is below --min-val-accuracy 0.9; nothing published" \
        in error_line(result)
    assert not (tmp_path / "models").exists()
    assert (tmp_path / "report" / "confusion_matrix.png").is_file()  # the report explains why


def test_a_poisoned_feature_cache_is_caught_before_publishing(train, tmp_path):
    """Whoever can write the shared cache can store one image's features under another's
    key. The validation images, run through the base again from their bytes, then disagree
    with their cached features: exit 4, nothing published."""
    import hashlib

    data = tmp_path / "data"
    write_sample_data(str(data), num_classes=2, per_class=6, seed=8, quiet=True)
    args = [*common(tmp_path, data), "--epochs", "2", "--val-split", "0.34"]
    first = train(*args, "--version", "1", "--report-dir", str(tmp_path / "report"))
    assert first.exit_code == 0, first.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    val = metrics["validation"]["predictions"]

    def entry(path: str) -> Path:
        digest = hashlib.sha256((data / path).read_bytes()).hexdigest()
        [found] = (tmp_path / "cache").rglob(f"{digest}.npy")
        return found

    # Each validation image's entry now holds the features of an image of the other class.
    others = {c: sorted(str(p.relative_to(data)) for p in (data / c).iterdir())
              for c in metrics["classes"]}
    for item in val:
        [other_class] = [c for c in others if c != item["true"]]
        entry(item["path"]).write_bytes(entry(others[other_class][0]).read_bytes())
    second = train(*args, "--version", "2", "--cache-check", "0",  # the cross-check alone
                   "--cache-check-fraction", "0")
    assert second.exit_code == 4, second.output
    line = error_line(second)
    assert f"the cached features of {len(val)} of {len(val)} validation images are not " \
           "their images' features" in line and "nothing published" in line
    assert sorted(p.name for p in (tmp_path / "models" / "m").iterdir()) == ["1"]
    # A fresh cache recomputes them, and the run publishes.
    fresh = train(*[a if a != str(tmp_path / "cache") else str(tmp_path / "cache2")
                    for a in args], "--version", "2")
    assert fresh.exit_code == 0, fresh.output


def test_poisoned_training_entries_are_caught_by_the_spot_check(train, tmp_path):
    """Validation cannot see poisoned training entries; recomputing cache hits can. Every
    training image's entry holds another image's features here, so any sample finds one."""
    import hashlib

    data = tmp_path / "data"
    write_sample_data(str(data), num_classes=2, per_class=4, seed=12, quiet=True)
    args = [*common(tmp_path, data), "--epochs", "1"]
    first = train(*args, "--version", "1", "--report-dir", str(tmp_path / "report"))
    assert first.exit_code == 0, first.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["features"]["spot_checked"] == 0  # nothing was cached yet
    val = {p["path"] for p in metrics["validation"]["predictions"]}
    entries = {}
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        [entries[str(path.relative_to(data))]] = (tmp_path / "cache").rglob(f"{digest}.npy")
    trained = [p for p in entries if p not in val]
    donor = entries[sorted(val)[0]].read_bytes()
    for path in trained:
        entries[path].write_bytes(donor)
    # Half of the 8 hits recomputed (4, so at least two of the six poisoned ones).
    second = train(*args, "--version", "2", "--cache-check", "0", "--cache-check-fraction",
                   "0.5")
    assert second.exit_code == 4, second.output
    assert "of 4 cache entries checked are not their images' features" in second.output
    line = error_line(second)
    assert "feature cache spot check:" in line and "nothing published" in line
    assert sorted(p.name for p in (tmp_path / "models" / "m").iterdir()) == ["1"]


def test_a_test_split_is_held_out_scored_and_reported(train, tmp_path):
    """The seed recipe's test set: kept out of training and validation, scored once, its
    loss, accuracy, per-class precision/recall and confusion matrix in the report and the
    manifest."""
    from contract.manifest import MANIFEST_FILE

    data = tmp_path / "data"
    write_sample_data(str(data), num_classes=2, per_class=6, seed=9, quiet=True)
    result = train(*common(tmp_path, data), "--epochs", "2", "--val-split", "0.34",
                   "--test-split", "0.34", "--version", "1",
                   "--report-dir", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    assert "test_accuracy " in result.output and "4 train / 4 val / 4 test images" in \
        result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["images"]["per_class"] == {c: {"train": 2, "val": 2, "test": 2}
                                             for c in ("circle", "square")}
    tested = metrics["test"]
    assert set(tested) == {"accuracy", "loss", "per_class", "confusion_matrix"}
    assert sum(map(sum, tested["confusion_matrix"]["rows_true_cols_predicted"])) == 4
    assert {c: v["support"] for c, v in tested["per_class"].items()} == {"circle": 2,
                                                                       "square": 2}
    assert tested["loss"] > 0
    validated = {p["path"] for p in metrics["validation"]["predictions"]}
    assert len(validated) == 4  # and none of them is a test image (4 + 4 + 4 = 12)
    assert (tmp_path / "report" / "test_confusion_matrix.png").is_file()
    manifest = json.loads((tmp_path / "models" / "m" / "1" / MANIFEST_FILE).read_text())
    assert manifest["metrics"]["test_images"] == 4
    assert manifest["metrics"]["test_accuracy"] == tested["accuracy"]


def test_the_test_accuracy_gate_publishes_nothing_and_exits_4(train, tmp_path):
    data = tmp_path / "data"
    write_sample_data(str(data), num_classes=2, per_class=4, seed=1, quiet=True)
    shutil.rmtree(data / "square")
    shutil.copytree(data / "circle", data / "square")  # no model can beat 50% on these
    result = train(*common(tmp_path, data), "--epochs", "1", "--test-split", "0.25",
                   "--min-test-accuracy", "0.9")
    assert result.exit_code == 4
    assert "test accuracy 0.5000 is below --min-test-accuracy 0.9; nothing published" in \
        error_line(result)
    assert not (tmp_path / "models").exists()


def test_sample_data_rejects_bad_class_count(tmp_path):
    result = CliRunner().invoke(cli, ["sample-data", "--output", str(tmp_path), "--classes", "9"])
    assert result.exit_code == 2
    assert "--classes must be between 2 and 8, got 9" in error_line(result)


def test_require_gpu_fails_fast_with_exit_3_before_reading_images(train, tmp_path,
                                                                  small_data):
    """A GPU run on a node where TensorFlow sees no GPU (driver or CUDA mismatch) must not
    quietly train on the CPU. This machine has no GPU."""
    result = train(*common(tmp_path, small_data), "--require-gpu")
    assert result.exit_code == 3
    line = error_line(result)
    assert "--require-gpu: TensorFlow sees no GPU (devices: CPU:0)" in line
    assert "reading images" not in result.stderr and not (tmp_path / "cache").exists()
    assert not (tmp_path / "models").exists()


class HeavyWorkStarted(Exception):
    pass


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Any step past the checks (devices, reading images, building VGG16) raises: a check
    that passed where it should fail shows up as this error, not as the documented exit."""
    import trainer.job

    def refuse(*_args, **_kwargs):
        raise HeavyWorkStarted

    for name in ("configure", "load_images", "build_base"):
        monkeypatch.setattr(trainer.job, name, refuse)


@pytest.mark.parametrize("case", ["data", "output file in the way", "output bucket",
                                  "cache file in the way", "weights file", "weights object",
                                  "base model file", "base model object",
                                  "existing version", "signing key missing",
                                  "signing key is a public key"])
def test_each_wrong_value_fails_before_any_heavy_work(tmp_path, small_data, no_heavy_work,
                                                      seaweed, case):
    args = dict(data=str(small_data), output=str(tmp_path / "models"),
                cache=str(tmp_path / "cache"), weights="none", version=None, key=None,
                base=None)
    expected_code, message = 2, None
    if case == "data":
        args["data"], message = str(tmp_path / "nope"), "location does not exist or is empty"
    elif case == "output file in the way":
        (tmp_path / "models").write_text("a file, not a folder")
        message = f"--output {tmp_path / 'models'}: cannot create the folder"
    elif case == "output bucket":
        args["output"] = "s3://no-such-bucket-here/models"
        message = "--output s3://no-such-bucket-here/models:"
    elif case == "cache file in the way":
        (tmp_path / "cache").write_text("a file")
        message = f"--cache {tmp_path / 'cache'}: cannot create the folder"
    elif case == "weights file":
        args["weights"], message = str(tmp_path / "nope.h5"), "no such file"
    elif case == "weights object":
        args["weights"] = "s3://models/nowhere/vgg16.weights.h5"
        message = "--weights s3://models/nowhere/vgg16.weights.h5: no such object"
    elif case == "base model file":
        args["base"], message = str(tmp_path / "nope.keras"), "no such file"
    elif case == "base model object":
        args["base"] = "s3://models/nowhere/tiny.keras"
        message = "--base-model s3://models/nowhere/tiny.keras: no such object"
    elif case == "signing key missing":
        args["key"] = str(tmp_path / "nope.pem")
        message = f"--signing-key {tmp_path / 'nope.pem'}: cannot read"
    elif case == "signing key is a public key":
        from tests.conftest import write_key_pair

        _, public = write_key_pair(tmp_path / "k")
        args["key"], message = str(public), "not an unencrypted PEM private key"
    else:
        version = tmp_path / "models" / "m" / "7"
        version.mkdir(parents=True)
        (version / "_MANIFEST.json").write_text("{}")
        args["version"], message = "7", "version 7 of model 'm' already exists"
    cli_args = ["--data", args["data"], "--output", args["output"], "--model-name", "m",
                "--cache", args["cache"]]
    cli_args += ["--base-model", args["base"]] if args["base"] else ["--weights",
                                                                    args["weights"]]
    if args["version"]:
        cli_args += ["--version", args["version"]]
    if args["key"]:
        cli_args += ["--signing-key", args["key"]]
    result = CliRunner().invoke(cli, ["train", "--quiet", *cli_args])
    assert not isinstance(result.exception, HeavyWorkStarted), case
    assert result.exit_code == expected_code, (case, result.output)
    assert message in error_line(result), (case, error_line(result))
