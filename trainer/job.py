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
from contract.manifest import build_manifest, identity_bytes, list_version_files
from contract.names import IDENTITY_FILE, SIGNATURE_FILE, STAGING_PREFIX
from contract.signing import SigningKey
from contract.storage import LocalLocation, open_location
from trainer.config import TrainConfig
from trainer.data import ImageSet, check_class_sizes, load_images, split_with_test, take
from trainer.export import export_saved_model
from trainer.features import (
    FeatureCache,
    decodable,
    extract_features,
    features_apart,
    float32_features,
)
from trainer.model import BaseModel, build_base, full_model
from trainer.precision import FEATURE_TOLERANCE
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
# The exported graph, fed images' bytes, gives the trained head's probabilities on their
# float32 features to within float noise (batching, kernel order); checked on this many.
EXPORT_TOLERANCE = 1e-3
EXPORT_CHECK_IMAGES = 16


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
    """The training run, phase by phase (trainer.preflight already checked the inputs)."""
    job = _Run(config)
    job.read()            # the images, and the base network
    job.features()        # fc2 features: from the cache, or computed once
    job.fit()             # the softmax head, on the training split
    job.measure()         # validation (and test) metrics
    job.gate()            # stop here, nothing published, below --min-*-accuracy
    return job.publish()  # export, check, sign, publish


class _Run:
    """One training run's state, filled in by its phases in order."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.timings: dict[str, float] = {}
        self.started = self.t = time.perf_counter()
        self.vectors: np.ndarray | None = None
        self.from_cache = self.computed = self.spot_checked = 0

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.t, 3)
        self.t = now

    def read(self) -> None:
        config = self.config
        # Before any image is read: a GPU run on a node where TensorFlow sees none stops here.
        self.runtime = configure(config.require_gpu, precision=config.precision
                                 if config.cache is not None else "float32")
        self.images = load_images(config.data, quiet=config.quiet)
        self.lap("read_images")
        self.base = build_base(config.weights, config.seed, config.base_model)
        self.lap("build_model")

    def features(self) -> None:
        config, images, base = self.config, self.images, self.base
        if config.cache is not None:
            cache = FeatureCache.of(open_location(config.cache), base, self.runtime.precision)
            features = extract_features(images, base, cache, config.batch_size, config.quiet,
                                        spot_checks=(config.cache_check,
                                                     config.cache_check_fraction))
            images, self.vectors = features.images, features.vectors
            self.from_cache, self.computed = features.from_cache, features.computed
            self.spot_checked = features.spot_checked
            log.info("features: %d from cache (%d of them recomputed and checked), %d "
                     "computed with %s", self.from_cache, self.spot_checked, self.computed,
                     base.name)
        else:
            images = decodable(images, config.batch_size)
        self.images = images
        self.lap("features")
        if images.skipped:
            log.warning("skipped %d files (listed in the report): %s", len(images.skipped),
                        "; ".join(f"{s.path}: {s.reason}" for s in images.skipped[:5]) +
                        (" ..." if len(images.skipped) > 5 else ""))
        check_class_sizes(images, config.data, with_test=config.test_split > 0)

    def fit(self) -> None:
        config, images = self.config, self.images
        self.train, self.val, self.test = split_with_test(
            images.labels, config.val_split, config.test_split, config.seed)
        train, val = self.train, self.val
        fit_args = dict(epochs=config.epochs, batch_size=config.batch_size,
                        learning_rate=config.learning_rate, seed=config.seed,
                        verbose=0 if config.quiet else 2)
        n_classes = len(images.classes)
        if config.cache is not None:
            self.result_fit = fit_on_features(
                self.vectors[train], images.labels[train], self.vectors[val],
                images.labels[val], n_classes, **fit_args)
        else:
            # --no-cache keeps the images in memory (the seed recipe, for small sets).
            self.result_fit = fit_end_to_end(
                self.base, list(take(images.contents, train)), images.labels[train],
                list(take(images.contents, val)), images.labels[val], n_classes, **fit_args)
        self.lap("train")

    def measure(self) -> None:
        config, images, fit, runtime = self.config, self.images, self.result_fit, self.runtime
        val, test = self.val, self.test
        validation = classification_metrics(images.classes, images.labels[val],
                                             fit.val_probabilities)
        validation["loss"] = fit.history["val_loss"][-1]
        validation["predictions"] = [
            {"path": images.paths[i], "true": images.classes[images.labels[i]],
             "label": images.classes[int(np.argmax(p))],
             "scores": [round(float(x), 6) for x in p]}
            for i, p in zip(val, fit.val_probabilities, strict=True)]
        self.metrics = metrics = {
            "model_name": config.model_name,
            "classes": images.classes,
            "history": fit.history,
            "validation": validation,
            "images": _image_counts(images, self.train, val, test),
            "skipped": [{"path": s.path, "reason": s.reason} for s in images.skipped],
            "base_model": self.base.describe(),
            "features": {"cache": config.cache, "from_cache": self.from_cache,
                         "computed": self.computed, "spot_checked": self.spot_checked,
                         "precision": runtime.precision,
                         "precision_from": runtime.precision_from},
            "timings_s": self.timings,
            "runtime": {"devices": runtime.devices, "threads": runtime.threads},
        }
        if len(test):  # held out of training and validation: the seed recipe's test metrics
            # Scored in float32, as the exported graph (TF Serving) will score them.
            if config.cache is None:
                probabilities = predict_images(self.base, fit.head,
                                               list(take(images.contents, test)),
                                               config.batch_size)
            else:
                test_vectors = self.vectors[test] if runtime.precision == "float32" else \
                    float32_features(take(images.contents, test), self.base,
                                     config.batch_size)
                probabilities = predict_features(fit.head, test_vectors, config.batch_size)
            tested = classification_metrics(images.classes, images.labels[test], probabilities)
            tested["loss"] = _cross_entropy(probabilities, images.labels[test])
            metrics["test"] = tested
            log.info("test: accuracy %.4f, loss %.4f on %d held-out images",
                     tested["accuracy"], tested["loss"], len(test))
        self.result = JobResult(None, None, metrics, fit, self.base, images, val)

    def gate(self) -> None:
        config, metrics = self.config, self.metrics
        gates = [("validation", metrics["validation"]["accuracy"], config.min_val_accuracy,
                  "--min-val-accuracy")]
        if "test" in metrics:
            gates.append(("test", metrics["test"]["accuracy"], config.min_test_accuracy,
                          "--min-test-accuracy"))
        for name, accuracy, minimum, flag in gates:
            if accuracy < minimum:
                with tempfile.TemporaryDirectory(prefix="trainer-report-") as work:
                    write_report(Path(work), metrics, self.result_fit.history)
                    _copy_report(Path(work), config.report_dir)
                raise GateNotMet(f"{name} accuracy {accuracy:.4f} is below {flag} "
                                 f"{minimum}; nothing published")

    def publish(self) -> JobResult:
        config = self.config
        # Assemble the version next to a local output, so publishing is a rename, not a copy.
        output = open_location(config.output)
        work_root = None
        if isinstance(output, LocalLocation):
            work_root = output.root / config.model_name
            work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}trainer-",
                                         dir=work_root) as work:
            version_dir = Path(work) / "version"
            self._assemble(version_dir)
            version = config.version or int(time.time())
            full_config = config.resolved(version).to_json()
            write_config(version_dir / REPORT_SUBDIR, shipped_config(full_config))
            self._sign(version_dir, version)
            files = list_version_files(version_dir)
            _copy_report(version_dir / REPORT_SUBDIR, config.report_dir, self.metrics,
                         full_config)
            self.result.uri = publish(version_dir, files, self._manifest(version, files),
                                      config.output, config.model_name, version,
                                      quiet=config.quiet)
            self.result.version = version
        return self.result

    def _assemble(self, version_dir: Path) -> None:
        """The SavedModel, its warmup records and the report; the export checked against
        the head (and the cached validation features against their images)."""
        config, fit, metrics = self.config, self.result_fit, self.metrics
        report_dir = version_dir / REPORT_SUBDIR
        # The plots are drawn while TensorFlow writes the SavedModel.
        with ThreadPoolExecutor(1) as pool:
            plots = pool.submit(write_plots, report_dir, metrics, fit.history)
            # Warmup records are drawn, not taken from the dataset: a published model
            # carries none of the user's images.
            self.serve = export_saved_model(full_model(self.base, fit.head),
                                            self.images.classes, version_dir,
                                            warmup_images())
            plots.result()
        self.lap("export")
        if config.cache is not None:
            metrics["cross_check"] = cross_check(
                self.serve, self.base, fit.head, take(self.images.contents, self.val),
                self.vectors[self.val], self.images.labels[self.val], self.runtime.precision,
                config.batch_size)
            self.lap("cross_check")
        self.timings["total_before_publish"] = round(self.t - self.started, 3)
        write_metrics(report_dir, shipped_metrics(metrics))

    def _sign(self, version_dir: Path, version: int) -> None:
        config = self.config
        # What this version is, in a file the signature covers (the manifest is unsigned).
        (version_dir / IDENTITY_FILE).write_bytes(
            identity_bytes(config.model_name, version, self.images.classes))
        if config.signing_key is not None:
            key = SigningKey.load(config.signing_key)
            key.sign(version_dir)  # over every file so far; the manifest then lists model.sig
            self.result.signed_by = key.key_id
            log.info("signed version %d with key %s (%s)", version, key.key_id, SIGNATURE_FILE)
        else:
            log.info("no --signing-key: version %d is published unsigned", version)

    def _manifest(self, version: int, files) -> dict:
        config, images, metrics = self.config, self.images, self.metrics
        validation = metrics["validation"]
        return build_manifest(
            model_name=config.model_name, version=version, classes=images.classes,
            base_model={**self.base.describe(),
                        "feature_precision": self.runtime.precision},
            input_spec={"image_size": list(IMAGE_SIZE), "preprocessing": PREPROCESSING,
                        "preprocessing_version": PREPROCESSING_VERSION},
            metrics={"val_accuracy": validation["accuracy"], "val_loss": validation["loss"],
                     "train_images": len(self.train), "val_images": len(self.val),
                     **({"test_accuracy": metrics["test"]["accuracy"],
                         "test_loss": metrics["test"]["loss"], "test_images": len(self.test)}
                        if "test" in metrics else {})},
            dataset={"uri": config.data, "fingerprint": images.fingerprint(),
                     "images": len(images), "skipped": len(images.skipped)},
            files=files)


def cross_check(serve, base: BaseModel, head, val_contents, cached: np.ndarray,
                labels: np.ndarray, precision: str, batch_size: int) -> dict:
    """Before publishing: are the validation images' cached features theirs, and does the
    exported graph give the trained head's scores?

    The features came from the cache, which anyone with write access to it can fill: each
    validation image goes through the base again, in float32 (the exported graph's arithmetic),
    and must match its entry to within the feature pass's precision (trainer.precision); a
    poisoned or stale entry stops the run (exit 4). The exported graph, fed the first images'
    bytes, must then give the head's probabilities on those float32 features to 1e-3. The
    head's accuracy on them is what TF Serving will answer for the validation images."""
    import tensorflow as tf

    from trainer.train import predict_features

    n = len(cached)
    fresh = float32_features(val_contents, base, batch_size)
    apart = features_apart(cached, fresh)
    largest = float(apart.max(initial=0.0))
    tolerance = FEATURE_TOLERANCE[precision]
    if (bad := int((apart > tolerance).sum())):
        raise GateNotMet(
            f"the cached features of {bad} of {n} validation images are not their images' "
            f"features (largest difference {largest:.3g} of the vector's scale, "
            f"{tolerance:g} allowed for {precision}): the feature cache holds entries "
            "written by someone else, or stale ones; nothing published. Run with a fresh "
            "--cache to recompute them")
    probabilities = predict_features(head, fresh, batch_size) if n else np.zeros((0, 1))
    k = min(EXPORT_CHECK_IMAGES, n)
    exported = serve(tf.constant(list(val_contents[:k])))["scores"].numpy() if k else \
        probabilities[:0]
    off = float(np.abs(exported - probabilities[:k]).max()) if k else 0.0
    if off > EXPORT_TOLERANCE:
        raise GateNotMet(
            f"the exported model's scores differ from the trained head's by {off:.3g} on "
            f"{k} validation images ({EXPORT_TOLERANCE:g} allowed); nothing published")
    served = float((probabilities.argmax(axis=1) == labels).mean()) if n else 0.0
    log.info("cross-check: the %d validation images' %s features match their images (largest "
             "difference %.2g of scale); the exported graph gives the head's scores (%.2g "
             "apart on %d); served validation accuracy %.4f", n, precision, largest, off, k,
             served)
    return {"images": n, "features_largest_difference": largest,
            "features_tolerance": tolerance, "export_checked": k,
            "export_largest_difference": off, "served_val_accuracy": served}


def shipped_metrics(metrics: dict) -> dict:
    """metrics.json as it goes into the version, which every serving pod holds: without
    the per-image lists (validation image paths, true labels and scores; skipped files and
    why). Those stay in --report-dir, beside the run."""
    shipped = {**metrics, "validation": {k: v for k, v in metrics["validation"].items()
                                         if k != "predictions"}}
    shipped["skipped"] = len(metrics.get("skipped", []))
    return shipped


def shipped_config(config: dict) -> dict:
    """config.json as it goes into the version: where the signing key lies on the trainer's
    machine is not the model's business (manifest and model.sig say whether it is signed)."""
    return {k: v for k, v in config.items() if k != "signing_key"}


def _copy_report(report_dir: Path, destination: str | None, metrics: dict | None = None,
                 config: dict | None = None) -> None:
    """The report into --report-dir, with the full metrics and configuration."""
    if destination:
        target = Path(destination).expanduser()
        shutil.copytree(report_dir, target, dirs_exist_ok=True)
        if metrics is not None:
            write_metrics(target, metrics)
        if config is not None:
            write_config(target, config)
