"""The trainer in-process on a tiny local dataset: cached vs no-cache, export round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contract.image_formats import ERROR_NOT_AN_IMAGE
from contract.manifest import MANIFEST_FILE, parse_manifest, sha256_file
from tests.conftest import TINY
from tests.tiny_base import WIDTH
from trainer.config import TrainConfig
from trainer.export import CLASSIFY, PREDICT_IMAGES, SERVING_DEFAULT, WARMUP_FILE
from trainer.job import REPORT_SUBDIR, run
from trainer.preprocessing import decode_and_resize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cached_run(tiny_model):
    return tiny_model.result, tiny_model.root


@pytest.fixture(scope="module")
def tiny_data(tiny_model):
    return str(tiny_model.root / "data")


def test_the_test_split_is_scored_the_same_with_and_without_the_cache(tiny_model, tiny_data,
                                                                     tiny, tmp_path):
    """--test-split on both paths: the cached one scores the held-out features with the
    head, --no-cache runs the held-out images through the whole network."""
    runs = {}
    for name, cache in (("cached", str(tiny_model.root / "cache")), ("no-cache", None)):
        config = TrainConfig(data=tiny_data, output=str(tmp_path / name), model_name="tiny",
                             cache=cache, quiet=True, test_split=0.34,
                             **{**tiny, "val_split": 0.17})
        runs[name] = run(config).metrics
    cached, uncached = runs["cached"], runs["no-cache"]
    assert cached["features"]["computed"] == 0  # all from the session's cache
    assert cached["images"]["test"] == uncached["images"]["test"] == 4
    assert cached["test"]["accuracy"] == uncached["test"]["accuracy"]
    np.testing.assert_allclose(cached["test"]["loss"], uncached["test"]["loss"], rtol=1e-4)
    assert cached["test"]["confusion_matrix"] == uncached["test"]["confusion_matrix"]


@pytest.fixture(scope="module")
def loaded(cached_run):
    result, _ = cached_run
    return tf.saved_model.load(result.uri)


def val_files(result) -> list[bytes]:
    return [result.images.contents[i] for i in result.val_index]


def test_cached_and_no_cache_paths_end_with_the_same_head(cached_run, tiny_data, tiny,
                                                          tmp_path):
    import keras

    cached, _ = cached_run
    config = TrainConfig(data=tiny_data, output=str(tmp_path / "models"), model_name="tiny",
                         cache=None, quiet=True, **tiny)
    keras.utils.set_random_seed(12345)  # whatever the process did before, --seed decides
    uncached = run(config)

    a = [w.numpy() for w in cached.fit.head.weights]
    b = [w.numpy() for w in uncached.fit.head.weights]
    assert a[0].shape == (WIDTH, 2)  # fc2's width, read from the base model file
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


def corrupt_png() -> bytes:
    """A PNG whose image data no longer matches its CRC."""
    import io

    png = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(png, "PNG")
    data = bytearray(png.getvalue())
    data[data.index(b"IDAT") + 8] ^= 0xFF
    return bytes(data)


def bomb_png() -> bytes:
    """A valid PNG declaring 144 megapixels in about 20 KB."""
    import io

    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, "PNG")
    return bomb.getvalue()


def test_a_bad_image_is_reported_per_item_and_never_fails_the_batch(cached_run, loaded):
    """DESIGN section 4: under TF Serving's batching one failed run fails every request in
    it, so the graph must not fail on image content. Good items come out exactly as they
    would without the bad ones."""
    result, _ = cached_run
    files = val_files(result)
    fn = loaded.signatures[SERVING_DEFAULT]
    alone = fn(image_bytes=tf.constant(files))
    jpeg = next(f for f in files if f.startswith(b"\xff\xd8"))
    bad = [b"this is not an image", b"", jpeg[: len(jpeg) // 2], corrupt_png(), bomb_png()]
    mixed = [bad[0], files[0], bad[1], bad[2], *files[1:], bad[3], bad[4]]
    out = fn(image_bytes=tf.constant(mixed))
    errors = [e.decode() for e in out["error"].numpy()]
    good_at = [1] + list(range(4, 4 + len(files) - 1))
    assert [errors[i] for i in good_at] == [""] * len(files)
    assert [errors[i] for i in (0, 2, 3, len(mixed) - 2, len(mixed) - 1)] == [
        "not a JPEG/PNG/GIF/BMP image", "not a JPEG/PNG/GIF/BMP image",
        "truncated or corrupt image", "truncated or corrupt image",
        "image too large (144 megapixels)"]
    for key in ("scores", "score", "label"):
        assert np.array_equal(out[key].numpy()[good_at], alone[key].numpy()), key
    for i in (0, 2, 3, len(mixed) - 2, len(mixed) - 1):
        assert out["label"].numpy()[i] == b"" and out["score"].numpy()[i] == 0
        assert not out["scores"].numpy()[i].any()  # all zero: no good item can be (sum 1)
    # Odd but good images are images: an animated GIF (first frame) and a CMYK JPEG.
    import io

    frames = [Image.new("RGB", (50, 40), c) for c in ((200, 0, 0), (0, 200, 0))]
    gif, cmyk = io.BytesIO(), io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("RGB", (60, 40), (0, 90, 200)).convert("CMYK").save(cmyk, "JPEG")
    odd = fn(image_bytes=tf.constant([gif.getvalue(), cmyk.getvalue(), b"junk"]))
    assert [e.decode() for e in odd["error"].numpy()] == ["", "", ERROR_NOT_AN_IMAGE]
    np.testing.assert_allclose(odd["scores"].numpy()[:2].sum(axis=1), 1, atol=1e-5)
    # Only bad images: still an answer, not an error.
    only_bad = fn(image_bytes=tf.constant(bad[:2]))
    assert [e.decode() for e in only_bad["error"].numpy()] == ["not a JPEG/PNG/GIF/BMP image"] * 2
    # Classify: a bad item gets all-zero scores.
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))}))
        .SerializeToString() for b in (files[0], bad[0])]
    scores = loaded.signatures[CLASSIFY](inputs=tf.constant(examples))["scores"].numpy()
    np.testing.assert_allclose(scores[0], alone["scores"].numpy()[0], atol=1e-6)
    assert not scores[1].any()


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
        "label": tf.string, "score": tf.float32, "classes": tf.string, "scores": tf.float32,
        "error": tf.string}
    assert set(sigs[PREDICT_IMAGES].structured_outputs) == {"label", "score", "classes",
                                                             "scores"}


def test_version_folder_has_labels_warmup_report_and_a_true_manifest(cached_run, tiny):
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
    # Drawn for the purpose: no image of the dataset is published inside the model.
    dataset = set(result.images.contents)
    warmup = [x for r in records if r.WhichOneof("log_type") == "predict_log"
              for x in r.predict_log.request.inputs["image_bytes"].string_val]
    assert warmup and not dataset & set(warmup)
    # One record mixes good images with a bad one: the per-item error path is warmed (and a
    # graph that failed on it would fail the load, not a client).
    batches = [list(r.predict_log.request.inputs["image_bytes"].string_val) for r in records
               if r.WhichOneof("log_type") == "predict_log"]
    mixed = [b for b in batches if len(b) > 1]
    assert mixed and any(x.startswith((b"\xff\xd8", b"\x89PNG")) for x in mixed[0])
    assert any(not x.startswith((b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM")) for x in mixed[0])

    manifest = parse_manifest((version_dir / MANIFEST_FILE).read_bytes(), expected_version=1)
    on_disk = sorted(p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*")
                     if p.is_file() and p.name != MANIFEST_FILE)
    assert sorted(f.path for f in manifest.files) == on_disk
    for f in manifest.files:
        assert (version_dir / f.path).stat().st_size == f.size
        assert sha256_file(version_dir / f.path) == f.sha256
    raw = manifest.raw
    assert raw["classes"] == result.images.classes
    assert raw["base_model"] == {
        "name": "tiny_vgg16", "source": tiny["base_model"], "weights": tiny["base_model"],
        "weights_sha256": result.base.weights_sha256, "feature_dim": WIDTH,
        "feature_precision": "float32"}
    assert raw["metrics"]["train_images"] + raw["metrics"]["val_images"] == 12
    assert raw["input"] == {"image_size": [224, 224], "preprocessing": "vgg16",
                            "preprocessing_version": raw["input"]["preprocessing_version"]}

    report = version_dir / REPORT_SUBDIR
    metrics = json.loads((report / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == TINY["epochs"]
    assert set(metrics["validation"]["per_class"]) == set(result.images.classes)
    # Every serving pod holds the version: no image path, label or score of the dataset
    # (issue 27); the report beside the run (--report-dir) has them.
    assert "predictions" not in metrics["validation"] and metrics["skipped"] == 0
    assert not [p for p in result.images.paths if p in (report / "metrics.json").read_text()]
    full = json.loads((out / "report" / "metrics.json").read_text())
    predictions = full["validation"]["predictions"]
    assert [p["path"] for p in predictions] == [result.images.paths[i]
                                                for i in result.val_index]
    np.testing.assert_allclose([p["scores"] for p in predictions],
                               result.fit.val_probabilities, atol=1e-6)
    assert metrics["features"]["computed"] == 12
    assert metrics["base_model"] == {k: v for k, v in raw["base_model"].items()
                                     if k != "feature_precision"}
    config = json.loads((report / "config.json").read_text())
    assert config["version"] == 1 and config["base_model"] == tiny["base_model"]
    assert config["weights"] is None  # the base file's own
    for png in ("training_curves.png", "confusion_matrix.png"):
        with Image.open(report / png) as im:
            assert im.format == "PNG" and im.width > 300
        assert (out / "report" / png).is_file()  # --report-dir got a copy


def _mutations(good: bytes):
    from hypothesis import strategies as st

    return st.one_of(
        st.binary(max_size=200),
        st.integers(0, len(good) - 1).map(lambda n: good[:n]),  # truncated anywhere
        st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)).map(  # one byte flipped
            lambda p: good[:p[0]] + bytes([good[p[0]] ^ p[1]]) + good[p[0] + 1:]),
        st.sampled_from([b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"\xff\xd8\xff"]).flatmap(
            lambda magic: st.binary(max_size=64).map(lambda rest: magic + rest)),
        st.just(corrupt_png()), st.just(bomb_png()))


def test_hostile_bytes_mixed_into_a_batch_never_change_a_good_items_output(cached_run,
                                                                           loaded):
    """Property: whatever bytes share a batch with good images, the graph answers, and the
    good images' outputs are bit-for-bit those they get alone."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    result, _ = cached_run
    goods = val_files(result)[:2]
    fn = loaded.signatures[SERVING_DEFAULT]
    reference = fn(image_bytes=tf.constant(goods))

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_mutations(goods[0]), min_size=1, max_size=3), st.randoms())
    def check(bad, rnd):
        batch = [(g, True) for g in goods] + [(b, False) for b in bad]
        rnd.shuffle(batch)
        goods_first = sorted(range(len(batch)), key=lambda i: not batch[i][1])
        out = fn(image_bytes=tf.constant([b for b, _ in batch]))
        good_at = [i for i in goods_first if batch[i][1]]
        order = [goods.index(batch[i][0]) for i in good_at]
        for key in ("scores", "score", "label"):
            assert np.array_equal(out[key].numpy()[good_at],
                                  reference[key].numpy()[order]), key
        for i, (_, is_good) in enumerate(batch):
            error = out["error"].numpy()[i]
            if error:  # reported bad: nothing else said about it
                assert not out["scores"].numpy()[i].any() and out["label"].numpy()[i] == b""
            else:  # it decoded after all (a flipped byte JPEG tolerates): a real answer
                assert abs(out["scores"].numpy()[i].sum() - 1) < 1e-4, is_good

    check()
