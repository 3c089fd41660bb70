"""`trainer evaluate`: score published versions on a labelled folder, the way serving would.

The version is downloaded (every file checked against its manifest, and its signature with a
verify key) and loaded with `tf.saved_model.load`; images go through its `serving_default`
signature as encoded bytes: the same graph, preprocessing included, that TF Serving runs.
With a baseline, both versions score the same images, and the accuracy difference gets a
paired bootstrap confidence interval.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from contract.errors import InputError
from contract.labels import DEFAULT_LABEL, LabelsError, read_labels
from contract.manifest import MANIFEST_FILE, Manifest
from contract.names import (
    ERROR_OUTPUT,
    IMAGE_BYTES_INPUT,
    LABELS_OBJECT,
    SERVING_DEFAULT,
    parse_version,
)
from contract.storage import Location, open_location
from contract.versions import Rejected, download_version
from trainer.data import ImageSet, load_images
from trainer.report import classification_metrics, plot_confusion_matrix

log = logging.getLogger(__name__)
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
MISCLASSIFIED_PNG = "misclassified.png"
MISCLASSIFIED_HTML = "misclassified.html"
GRID_MAX = 48  # images shown in the misclassified grid (the worst first)


@dataclass
class ModelRef:
    """`<models>/<name>` and which version of it."""

    folder: Location
    name: str
    version: int
    how: str  # "version 3", "label stable", "newest"


def resolve(model_uri: str, which: str | None = None) -> ModelRef:
    """`--model URI[/VERSION]`, optionally overridden by `which` (a version or a label)."""
    uri = model_uri.rstrip("/")
    head, _, last = uri.rpartition("/")
    if parse_version(last) is not None:
        uri = head
        which = last if which is None else which
    folder = open_location(uri)
    name = folder.uri.rstrip("/").rsplit("/", 1)[-1]
    if which is not None and parse_version(which) is not None:
        return ModelRef(folder, name, int(which), f"version {which}")
    labels = _labels(folder, name)
    label = which or (DEFAULT_LABEL if DEFAULT_LABEL in labels else None)
    if label is not None:
        if label not in labels:
            raise InputError(f"{uri}: no label {label!r} (labels: "
                             f"{', '.join(sorted(labels)) or 'none'})")
        return ModelRef(folder, name, labels[label], f"label {label}")
    versions = sorted((v for v in map(parse_version, folder.list_dirs()) if v), reverse=True)
    for version in versions:
        if folder.child(str(version)).exists(MANIFEST_FILE):
            return ModelRef(folder, name, version, "newest")
    raise InputError(f"--model {uri}: no published version of {name}")


def _labels(folder: Location, name: str) -> dict[str, int]:
    try:
        return read_labels(folder, name).labels
    except LabelsError as e:
        raise InputError(f"{folder.uri}/{LABELS_OBJECT}: {e}") from None


@dataclass
class Scored:
    ref: ModelRef
    manifest: Manifest
    classes: list[str]  # the graph's own `classes` output, in its order
    scores: np.ndarray  # [n, C] in that order
    errors: list[str]  # per image, "" when it was classified


def score(ref: ModelRef, images: ImageSet, batch_size: int, verify_key=None,
          quiet: bool = False) -> Scored:
    """Download, verify, load, and run every image through serving_default."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="evaluate-") as work:
        try:
            manifest = download_version(ref.folder, ref.name, ref.version, Path(work),
                                        verify_key)
        except Rejected as e:
            raise InputError(f"version {ref.version} of {ref.name}: {e}") from None
        signature = tf.saved_model.load(work).signatures[SERVING_DEFAULT]
        scores, errors, classes = [], [], None
        bar = tqdm(total=len(images), desc=f"scoring version {ref.version}", unit="img",
                   disable=quiet)
        with bar:
            for start in range(0, len(images), batch_size):
                batch = images.contents[start:start + batch_size]
                out = signature(**{IMAGE_BYTES_INPUT: tf.constant(batch)})
                if classes is None:
                    # Class order from the graph, which the scores come from: the manifest
                    # only states it, and nothing signs the manifest.
                    classes = [c.decode() for c in out["classes"].numpy()[0]]
                    _check_classes(ref, manifest, classes, images)
                scores.append(out["scores"].numpy())
                errors += [e.decode() for e in out[ERROR_OUTPUT].numpy()]
                bar.update(len(batch))
    return Scored(ref, manifest, classes, np.concatenate(scores), errors)


def _check_classes(ref: ModelRef, manifest: Manifest, classes: list[str],
                   images: ImageSet) -> None:
    if classes != manifest.classes:
        raise InputError(f"version {ref.version} of {ref.name}: the manifest's classes "
                         f"{manifest.classes} differ from the model's own {classes} (the "
                         "manifest was changed after publishing)")
    missing = sorted(set(images.classes) - set(classes))
    if missing:
        raise InputError(f"--data has classes the model does not know: {', '.join(missing)} "
                         f"(model classes: {', '.join(classes)})")


def metrics_of(scored: Scored, images: ImageSet) -> dict:
    """Accuracy, loss, per-class precision/recall and the confusion matrix over the images
    the model could classify; the others are listed with their reasons."""
    classes = scored.classes
    y = np.asarray([classes.index(images.classes[i]) for i in images.labels], dtype=np.int64)
    good = np.asarray([not e for e in scored.errors], dtype=bool)
    metrics = classification_metrics(classes, y[good], scored.scores[good])
    picked = np.clip(scored.scores[good][np.arange(int(good.sum())), y[good]], 1e-7, 1.0)
    metrics["loss"] = float(-np.log(picked).mean()) if good.any() else float("nan")
    metrics["images"] = int(good.sum())
    metrics["unclassified"] = [{"path": images.paths[i], "error": scored.errors[i]}
                               for i in np.flatnonzero(~good)]
    return {"model": scored.ref.name, "version": scored.ref.version, "chosen_by":
            scored.ref.how, **metrics}


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0,
                     samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """CONFIDENCE interval of accuracy(a) - accuracy(b), resampling images (both models on
    the same resampled images)."""
    rng = np.random.default_rng(seed)
    n = len(correct_a)
    idx = rng.integers(0, n, size=(samples, n))
    diffs = correct_a[idx].mean(axis=1) - correct_b[idx].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return float(low), float(high)


def compare(candidate: Scored, baseline: Scored, images: ImageSet) -> dict:
    """Per-metric differences (candidate - baseline) on the images both classified."""
    classes = candidate.classes
    if baseline.classes != classes:
        raise InputError(f"the baseline (version {baseline.ref.version}) has classes "
                         f"{baseline.classes}, the candidate {classes}: not "
                         "comparable")
    y = np.asarray([classes.index(images.classes[i]) for i in images.labels])
    both = np.asarray([not a and not b for a, b in zip(candidate.errors, baseline.errors,
                                                       strict=True)], dtype=bool)
    right_c = (candidate.scores.argmax(1) == y)[both].astype(float)
    right_b = (baseline.scores.argmax(1) == y)[both].astype(float)
    low, high = paired_bootstrap(right_c, right_b)
    mine, theirs = metrics_of(candidate, images), metrics_of(baseline, images)
    per_class = {c: {k: mine["per_class"][c][k] - theirs["per_class"][c][k]
                     for k in ("precision", "recall", "f1")} for c in classes}
    return {"candidate": candidate.ref.version, "baseline": baseline.ref.version,
            "baseline_chosen_by": baseline.ref.how, "images": int(both.sum()),
            "accuracy": float(right_c.mean() - right_b.mean()),
            "accuracy_ci": [low, high], "confidence": CONFIDENCE,
            "bootstrap_samples": BOOTSTRAP_SAMPLES,
            "loss": mine["loss"] - theirs["loss"], "per_class": per_class}


def write_report(folder: Path, metrics: dict, scored: Scored, images: ImageSet) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    own = metrics.get("candidate", metrics)
    plot_confusion_matrix(own, folder / CONFUSION_FILE,
                          f"{own['model']} version {own['version']}")
    wrong = _misclassified(scored, images)
    _grid_png(wrong, folder / MISCLASSIFIED_PNG, own)
    _grid_html(wrong, folder / MISCLASSIFIED_HTML, own)


def _misclassified(scored: Scored, images: ImageSet) -> list[dict]:
    from trainer.data import take

    classes = scored.classes
    out = []
    for i, (row, error) in enumerate(zip(scored.scores, scored.errors, strict=True)):
        true = images.classes[images.labels[i]]
        predicted = classes[int(row.argmax())]
        if error or predicted != true:
            out.append({"index": i, "path": images.paths[i], "true": true,
                        "predicted": "" if error else predicted,
                        "score": 0.0 if error else float(row.max()), "error": error})
    for w, data in zip(out, take(images.contents, [w["index"] for w in out]), strict=True):
        w["data"] = data
    return sorted(out, key=lambda w: -w["score"])  # confidently wrong first


def _thumbnail(data: bytes, size: int = 160):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return im.copy()
    except Exception:  # an image the model could not read may not open here either
        return Image.new("RGB", (size, size), (200, 200, 200))


def _caption(w: dict) -> str:
    if w["error"]:
        return f"true {w['true']}\nnot classified: {w['error']}"
    return f"true {w['true']}\npredicted {w['predicted']} {w['score']:.2f}"


def _file_name(path: str, width: int = 26) -> str:
    """The image's file name, shortened in the middle to fit under a thumbnail."""
    name = path.rsplit("/", 1)[-1]
    return name if len(name) <= width else f"{name[:width // 2 - 1]}...{name[-(width // 2 - 2):]}"


def _grid_png(wrong: list[dict], path: Path, metrics: dict) -> None:
    shown = wrong[:GRID_MAX]
    cols = min(6, max(1, len(shown)))  # one image: one column, not six
    rows = max(1, -(-len(shown) // cols))
    fig = Figure(figsize=(max(2.2 * cols, 5.5), 2.8 * rows + 0.6), layout="constrained")
    fig.suptitle(f"{metrics['model']} version {metrics['version']}: {len(wrong)} "
                 f"misclassified of {metrics['images'] + len(metrics['unclassified'])}"
                 + (f" (first {GRID_MAX})" if len(wrong) > GRID_MAX else ""))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, w in zip(axes, shown, strict=False):
        ax.imshow(_thumbnail(w["data"]))
        ax.set_title(f"{_file_name(w['path'])}\n{_caption(w)}", fontsize=8)
    if not shown:
        axes[0].text(0, 0.5, "no misclassified images", fontsize=12)
    fig.savefig(path, dpi=80)


def _grid_html(wrong: list[dict], path: Path, metrics: dict) -> None:
    """One self-contained page: thumbnails inlined as data: URIs."""
    cells = []
    for w in wrong:
        buf = io.BytesIO()
        _thumbnail(w["data"]).save(buf, format="JPEG", quality=85)
        src = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        cells.append(f'<figure><img src="{src}" alt="{html.escape(w["path"])}">'
                     f'<figcaption>{html.escape(w["path"])}<br>'
                     f'{html.escape(_caption(w)).replace(chr(10), "<br>")}</figcaption>'
                     "</figure>")
    title = html.escape(f"{metrics['model']} version {metrics['version']}: {len(wrong)} "
                        f"misclassified, accuracy {metrics['accuracy']:.4f}")
    path.write_text(
        "<!doctype html><meta charset=utf-8><title>" + title + "</title><style>"
        "body{font-family:sans-serif}figure{display:inline-block;width:180px;margin:6px;"
        "vertical-align:top;font-size:12px}img{max-width:160px}</style><h1>" + title +
        "</h1>" + ("".join(cells) or "<p>No misclassified images.</p>") + "\n")


def evaluate(model: str, data: str, baseline: str | None, report_dir: Path,
             batch_size: int = 32, verify_key=None, quiet: bool = False) -> dict:
    """Score `model` (and `baseline`) on `data`; write the report; return metrics.json."""
    candidate_ref = resolve(model)
    baseline_ref = resolve(model, baseline) if baseline else None
    images = load_images(data, quiet)
    candidate = score(candidate_ref, images, batch_size, verify_key, quiet)
    metrics = metrics_of(candidate, images)
    if baseline_ref is not None:
        base = score(baseline_ref, images, batch_size, verify_key, quiet)
        metrics = {"candidate": metrics, "baseline": metrics_of(base, images),
                   "difference": compare(candidate, base, images)}
    metrics["data"] = {"uri": data, "images": len(images), "classes": images.classes,
                       "skipped": [{"path": s.path, "reason": s.reason}
                                   for s in images.skipped]}
    write_report(report_dir, metrics, candidate, images)
    return metrics
