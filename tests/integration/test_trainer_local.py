"""The trainer in-process on a tiny local dataset: cached vs no-cache, export round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import TINY
from trainer.config import TrainConfig
from trainer.export import CLASSIFY, PREDICT_IMAGES, SERVING_DEFAULT, WARMUP_FILE
from trainer.job import REPORT_SUBDIR, run
from trainer.manifest import MANIFEST_FILE, parse_manifest, sha256_file
from trainer.preprocessing import decode_and_resize


@pytest.fixture(scope="module")
def cached_run(tiny_model):
    return tiny_model.result, tiny_model.root


@pytest.fixture(scope="module")
def tiny_data(tiny_model):
    return str(tiny_model.root / "data")


@pytest.fixture(scope="module")
def loaded(cached_run):
    result, _ = cached_run
    return tf.saved_model.load(result.uri)


def val_files(result) -> list[bytes]:
    return [result.images.contents[i] for i in result.val_index]


def test_cached_and_no_cache_paths_end_with_the_same_head(cached_run, tiny_data, tmp_path):
    cached, _ = cached_run
    config = TrainConfig(data=tiny_data, output=str(tmp_path / "models"), model_name="tiny",
                         cache=None, quiet=True, **TINY)
    uncached = run(config)

    a = [w.numpy() for w in cached.fit.head.weights]
    b = [w.numpy() for w in uncached.fit.head.weights]
    assert a[0].shape == (4096, 2)
    for wa, wb in zip(a, b, strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
    # The head actually moved away from its initial weights (training happened).
    assert not np.allclose(a[1], 0)
    np.testing.assert_allclose(cached.fit.history["loss"], uncached.fit.history["loss"],
                               rtol=1e-4)
    assert cached.metrics["validation"]["accuracy"] == uncached.metrics["validation"]["accuracy"]
    np.testing.assert_allclose(cached.fit.val_probabilities, uncached.fit.val_probabilities,
                               atol=1e-5)


def test_serving_default_matches_the_trainers_predictions(cached_run, loaded):
    result, _ = cached_run
    files = val_files(result)
    fn = loaded.signatures[SERVING_DEFAULT]
    out = fn(image_bytes=tf.constant(files))
    np.testing.assert_allclose(out["scores"].numpy(), result.fit.val_probabilities, atol=1e-5)
    classes = np.array(result.images.classes)
    expected_top = result.fit.val_probabilities.argmax(axis=1)
    assert [x.decode() for x in out["label"].numpy()] == list(classes[expected_top])
    np.testing.assert_allclose(out["score"].numpy(), result.fit.val_probabilities.max(axis=1),
                               atol=1e-5)
    assert out["classes"].numpy().tolist() == [[c.encode() for c in classes]] * len(files)
    # A second batch size: one image at a time gives the same scores.
    single = fn(image_bytes=tf.constant(files[:1]))["scores"].numpy()
    np.testing.assert_allclose(single[0], result.fit.val_probabilities[0], atol=1e-5)


def test_predict_images_and_classify_signatures_agree(cached_run, loaded):
    result, _ = cached_run
    files = val_files(result)
    pixels = tf.stack([decode_and_resize(tf.constant(b)) for b in files])
    out = loaded.signatures[PREDICT_IMAGES](images=pixels)
    np.testing.assert_allclose(out["scores"].numpy(), result.fit.val_probabilities, atol=1e-5)

    examples = [tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))}))
        .SerializeToString() for b in files]
    out = loaded.signatures[CLASSIFY](inputs=tf.constant(examples))
    assert set(out) == {"classes", "scores"}
    assert out["scores"].shape == (len(files), 2)
    np.testing.assert_allclose(out["scores"].numpy(), result.fit.val_probabilities, atol=1e-5)


def test_undecodable_bytes_are_an_invalid_argument_error(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        loaded.signatures[SERVING_DEFAULT](image_bytes=tf.constant([b"not an image"]))


def test_signature_names_and_dtypes_are_the_contract(loaded):
    sigs = loaded.signatures
    assert set(sigs) == {SERVING_DEFAULT, PREDICT_IMAGES, CLASSIFY}
    spec = sigs[SERVING_DEFAULT].structured_input_signature[1]
    assert spec["image_bytes"].dtype == tf.string and spec["image_bytes"].shape.as_list() == [None]
    spec = sigs[PREDICT_IMAGES].structured_input_signature[1]
    assert spec["images"].dtype == tf.float32
    assert spec["images"].shape.as_list() == [None, 224, 224, 3]
    assert list(sigs[CLASSIFY].structured_input_signature[1]) == ["inputs"]
    outputs = sigs[SERVING_DEFAULT].structured_outputs
    assert {k: v.dtype for k, v in outputs.items()} == {
        "label": tf.string, "score": tf.float32, "classes": tf.string, "scores": tf.float32}


def test_version_folder_has_labels_warmup_report_and_a_true_manifest(cached_run):
    from tensorflow_serving.apis import prediction_log_pb2

    result, out = cached_run
    version_dir = out / "models" / "tiny" / "1"
    assert result.uri == str(version_dir)
    assert (version_dir / "assets" / "labels.txt").read_text().split() == result.images.classes
    for name in ("saved_model.pb", "fingerprint.pb", "variables/variables.index"):
        assert (version_dir / name).is_file(), name

    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(str(version_dir / WARMUP_FILE))]
    kinds = [r.WhichOneof("log_type") for r in records]
    assert kinds.count("predict_log") >= 1 and "classify_log" in kinds
    request = records[0].predict_log.request
    assert request.model_spec.signature_name == SERVING_DEFAULT
    assert request.inputs["image_bytes"].string_val[0] in val_files(result)

    manifest = parse_manifest((version_dir / MANIFEST_FILE).read_bytes(), expected_version=1)
    on_disk = sorted(p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*")
                     if p.is_file() and p.name != MANIFEST_FILE)
    assert sorted(f.path for f in manifest.files) == on_disk
    for f in manifest.files:
        assert (version_dir / f.path).stat().st_size == f.size
        assert sha256_file(version_dir / f.path) == f.sha256
    raw = manifest.raw
    assert raw["classes"] == result.images.classes
    assert raw["base_model"]["weights"] == "none"
    assert raw["base_model"]["weights_sha256"] == result.base.weights_sha256
    assert raw["metrics"]["train_images"] + raw["metrics"]["val_images"] == 12
    assert raw["input"] == {"image_size": [224, 224], "preprocessing": "vgg16",
                            "preprocessing_version": raw["input"]["preprocessing_version"]}

    report = version_dir / REPORT_SUBDIR
    metrics = json.loads((report / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == TINY["epochs"]
    assert set(metrics["validation"]["per_class"]) == set(result.images.classes)
    predictions = metrics["validation"]["predictions"]
    assert [p["path"] for p in predictions] == [result.images.paths[i]
                                                for i in result.val_index]
    np.testing.assert_allclose([p["scores"] for p in predictions],
                               result.fit.val_probabilities, atol=1e-6)
    assert metrics["features"]["computed"] == 12
    config = json.loads((report / "config.json").read_text())
    assert config["version"] == 1 and config["weights"] == "none"
    for png in ("training_curves.png", "confusion_matrix.png"):
        with Image.open(report / png) as im:
            assert im.format == "PNG" and im.width > 300
        assert (out / "report" / png).is_file()  # --report-dir got a copy
