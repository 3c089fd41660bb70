"""The training job, end to end: read images, features, train, gate, export, report, publish."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.errors import GateNotMet
from contract.manifest import build_manifest, list_version_files
from contract.names import SIGNATURE_FILE, STAGING_PREFIX
from contract.signing import SigningKey
from contract.storage import LocalLocation, open_location
from trainer.config import TrainConfig
from trainer.data import ImageSet, check_class_sizes, load_images, split_with_test
from trainer.export import export_saved_model
from trainer.features import FeatureCache, decodable, extract_features, take
from trainer.model import BaseModel, build_base, full_model
from trainer.preprocessing import IMAGE_SIZE, PREPROCESSING, PREPROCESSING_VERSION
from trainer.publish import publish
from trainer.report import (
    classification_metrics,
    write_config,
    write_metrics,
    write_plots,
    write_report,
)
from trainer.runtime import configure
from trainer.sample_data import warmup_images
from trainer.train import (
    FitResult,
    fit_end_to_end,
    fit_on_features,
    predict_features,
    predict_images,
)

log = logging.getLogger(__name__)
REPORT_SUBDIR = "assets.extra/report"
# The exported graph, fed the validation images' bytes, must give the probabilities the head
# gave on their cached features, to within float noise (batching, kernel order).
CROSS_CHECK_TOLERANCE = 1e-3
CROSS_CHECK_BATCH = 16


@dataclass
class JobResult:
    version: int | None  # None when the accuracy gate stopped publication
    uri: str | None
    metrics: dict
    fit: FitResult
    base: BaseModel
    images: ImageSet  # the usable images, in the order used for training/validation
    val_index: np.ndarray
    signed_by: str | None = None  # the signing key's id, when the version is signed


def _image_counts(images: ImageSet, train: np.ndarray, val: np.ndarray,
                  test: np.ndarray) -> dict:
    per_class = {c: {"train": int((images.labels[train] == i).sum()),
                     "val": int((images.labels[val] == i).sum()),
                     "test": int((images.labels[test] == i).sum())}
                 for i, c in enumerate(images.classes)}
    return {"train": len(train), "val": len(val), "test": len(test), "per_class": per_class}


def _cross_entropy(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean categorical cross-entropy, as Keras reports the training loss."""
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)
    return float(-np.log(picked).mean())


def run(config: TrainConfig) -> JobResult:
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    t = started
    # Before any image is read (the CLI has already run trainer.preflight): a GPU run on a
    # node where TensorFlow sees none stops here.
    runtime = configure(config.require_gpu)
    images = load_images(config.data, quiet=config.quiet)
    t = lap("read_images", t)
    base = build_base(config.weights, config.seed)
    t = lap("build_model", t)

    from_cache = computed = spot_checked = 0
    if config.cache is not None:
        cache = FeatureCache(open_location(config.cache), base.weights_sha256)
        features = extract_features(images, base, cache, config.batch_size, config.quiet,
                                    spot_checks=config.cache_check)
        images, vectors = features.images, features.vectors
        from_cache, computed = features.from_cache, features.computed
        spot_checked = features.spot_checked
        log.info("features: %d from cache (%d of them recomputed and checked), %d computed "
                 "with VGG16", from_cache, spot_checked, computed)
    else:
        images = decodable(images, config.batch_size)
    t = lap("features", t)
    if images.skipped:
        log.warning("skipped %d files (listed in the report): %s", len(images.skipped),
                    "; ".join(f"{s.path}: {s.reason}" for s in images.skipped[:5]) +
                    (" ..." if len(images.skipped) > 5 else ""))
    check_class_sizes(images, config.data, with_test=config.test_split > 0)

    train, val, test = split_with_test(images.labels, config.val_split, config.test_split,
                                       config.seed)
    fit_args = dict(epochs=config.epochs, batch_size=config.batch_size,
                    learning_rate=config.learning_rate, seed=config.seed,
                    verbose=0 if config.quiet else 2)
    n_classes = len(images.classes)
    if config.cache is not None:
        fit = fit_on_features(vectors[train], images.labels[train], vectors[val],
                              images.labels[val], n_classes, **fit_args)
    else:
        # --no-cache keeps the images in memory (the seed recipe, for small sets).
        fit = fit_end_to_end(base, list(take(images.contents, train)), images.labels[train],
                             list(take(images.contents, val)), images.labels[val], n_classes,
                             **fit_args)
    t = lap("train", t)

    validation = classification_metrics(images.classes, images.labels[val],
                                         fit.val_probabilities)
    validation["loss"] = fit.history["val_loss"][-1]
    validation["predictions"] = [
        {"path": images.paths[i], "true": images.classes[images.labels[i]],
         "label": images.classes[int(np.argmax(p))], "scores": [round(float(x), 6) for x in p]}
        for i, p in zip(val, fit.val_probabilities, strict=True)]
    metrics = {
        "model_name": config.model_name,
        "classes": images.classes,
        "history": fit.history,
        "validation": validation,
        "images": _image_counts(images, train, val, test),
        "skipped": [{"path": s.path, "reason": s.reason} for s in images.skipped],
        "features": {"cache": config.cache, "from_cache": from_cache, "computed": computed,
                     "spot_checked": spot_checked},
        "timings_s": timings,
        "runtime": {"devices": runtime.devices, "threads": runtime.threads},
    }
    if len(test):  # held out of training and validation: the seed recipe's test metrics
        probabilities = predict_features(fit.head, vectors[test], config.batch_size) \
            if config.cache is not None else predict_images(
                base, fit.head, list(take(images.contents, test)), config.batch_size)
        tested = classification_metrics(images.classes, images.labels[test], probabilities)
        tested["loss"] = _cross_entropy(probabilities, images.labels[test])
        metrics["test"] = tested
        log.info("test: accuracy %.4f, loss %.4f on %d held-out images", tested["accuracy"],
                 tested["loss"], len(test))
    result = JobResult(None, None, metrics, fit, base, images, val)

    gates = [("validation", validation["accuracy"], config.min_val_accuracy,
              "--min-val-accuracy")]
    if "test" in metrics:
        gates.append(("test", metrics["test"]["accuracy"], config.min_test_accuracy,
                      "--min-test-accuracy"))
    for name, accuracy, minimum, flag in gates:
        if accuracy < minimum:
            with tempfile.TemporaryDirectory(prefix="trainer-report-") as work:
                write_report(Path(work), metrics, fit.history)
                _copy_report(Path(work), config.report_dir)
            raise GateNotMet(f"{name} accuracy {accuracy:.4f} is below {flag} {minimum}; "
                             "nothing published")

    # Assemble the version next to a local output, so publishing is a rename, not a copy.
    output = open_location(config.output)
    work_root = None
    if isinstance(output, LocalLocation):
        work_root = output.root / config.model_name
        work_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}trainer-", dir=work_root) as work:
        version_dir = Path(work) / "version"
        report_dir = version_dir / REPORT_SUBDIR
        # The plots are drawn while TensorFlow writes the SavedModel.
        with ThreadPoolExecutor(1) as pool:
            plots = pool.submit(write_plots, report_dir, metrics, fit.history)
            # Warmup records are drawn, not taken from the dataset: a published model
            # carries none of the user's images.
            serve = export_saved_model(full_model(base, fit.head), images.classes,
                                       version_dir, warmup_images())
            plots.result()
        t = lap("export", t)
        if config.cache is not None:
            cross_check(serve, take(images.contents, val), fit.val_probabilities)
            t = lap("cross_check", t)
        timings["total_before_publish"] = round(t - started, 3)
        write_metrics(report_dir, metrics)

        version = config.version or int(time.time())
        write_config(report_dir, config.resolved(version).to_json())
        if config.signing_key is not None:
            key = SigningKey.load(config.signing_key)
            key.sign(version_dir)  # over every file so far; the manifest then lists model.sig
            result.signed_by = key.key_id
            log.info("signed version %d with key %s (%s)", version, key.key_id, SIGNATURE_FILE)
        else:
            log.info("no --signing-key: version %d is published unsigned", version)
        files = list_version_files(version_dir)
        manifest = build_manifest(
            model_name=config.model_name, version=version, classes=images.classes,
            base_model={"name": "vgg16", "weights": config.weights,
                        "weights_sha256": base.weights_sha256},
            input_spec={"image_size": list(IMAGE_SIZE), "preprocessing": PREPROCESSING,
                        "preprocessing_version": PREPROCESSING_VERSION},
            metrics={"val_accuracy": validation["accuracy"], "val_loss": validation["loss"],
                     "train_images": len(train), "val_images": len(val),
                     **({"test_accuracy": metrics["test"]["accuracy"],
                         "test_loss": metrics["test"]["loss"], "test_images": len(test)}
                        if "test" in metrics else {})},
            dataset={"uri": config.data, "fingerprint": images.fingerprint(),
                     "images": len(images), "skipped": len(images.skipped)},
            files=files)
        _copy_report(report_dir, config.report_dir)
        result.uri = publish(version_dir, files, manifest, config.output, config.model_name,
                             version, quiet=config.quiet)
        result.version = version
    return result


def cross_check(serve, val_bytes, expected: np.ndarray) -> None:
    """Score the validation images from their bytes through the exported graph and compare
    with what the head gave on their features. The features came from the cache, which
    anyone with write access to it can fill: a poisoned or stale entry shows up here as a
    disagreement, and the run stops (exit 4) before anything is published."""
    import tensorflow as tf

    got = np.concatenate([  # a batch of images in memory at a time
        serve(tf.constant(val_bytes[i:i + CROSS_CHECK_BATCH]))["scores"].numpy()
        for i in range(0, len(val_bytes), CROSS_CHECK_BATCH)]) if len(val_bytes) else expected
    diff = np.abs(got - expected).max(axis=1) if len(expected) else np.zeros(0)
    bad = int((diff > CROSS_CHECK_TOLERANCE).sum())
    if bad:
        raise GateNotMet(
            f"the exported model disagrees with the cached features on {bad} of "
            f"{len(expected)} validation images (largest difference {diff.max():.3g}): the "
            "feature cache holds entries that are not these images' features (written by "
            "someone else, or stale); nothing published. Run with a fresh --cache to "
            "recompute them")
    log.info("cross-check: the exported graph gives the cached-feature predictions on all "
             "%d validation images (largest difference %.2g)", len(expected),
             float(diff.max()) if len(diff) else 0.0)


def _copy_report(report_dir: Path, destination: str | None) -> None:
    if destination:
        shutil.copytree(report_dir, Path(destination).expanduser(), dirs_exist_ok=True)
