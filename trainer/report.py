"""The training report: metrics.json, training_curves.png, confusion_matrix.png.

Written into the version folder (assets.extra/report/) and, with --report-dir, to a local
folder a person can open. Pictures use matplotlib's object API (no global pyplot state).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    confusion_matrix,
    precision_recall_fscore_support,
)

METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
TEST_CONFUSION_FILE = "test_confusion_matrix.png"  # with --test-split
CONFIG_FILE = "config.json"


def classification_metrics(classes: list[str], y_true: np.ndarray,
                           probabilities: np.ndarray) -> dict:
    """Validation accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    labels = list(range(len(classes)))
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": {"labels": classes, "rows_true_cols_predicted": matrix.tolist()},
    }


def plot_training_curves(history: dict[str, list[float]], path: Path) -> None:
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, metric, title in zip(fig.subplots(1, 2), ("loss", "accuracy"),
                                 ("Loss (categorical cross-entropy)", "Accuracy"), strict=True):
        ax.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


def plot_confusion_matrix(metrics: dict, path: Path, title: str = "Validation") -> None:
    cm = metrics["confusion_matrix"]
    size = max(4, 1 + 0.6 * len(cm["labels"]))
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(cm["rows_true_cols_predicted"]),
                           display_labels=cm["labels"]).plot(ax=ax, colorbar=True,
                                                             xticks_rotation=45)
    ax.set_title(f"{title} confusion matrix (accuracy {metrics['accuracy']:.3f})")
    fig.savefig(path, dpi=100)


def write_plots(folder: Path, metrics: dict, history: dict[str, list[float]]) -> None:
    """The two pictures into `folder` (safe to run beside the export: no shared state)."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_training_curves(history, folder / CURVES_FILE)
    plot_confusion_matrix(metrics["validation"], folder / CONFUSION_FILE)
    if "test" in metrics:
        plot_confusion_matrix(metrics["test"], folder / TEST_CONFUSION_FILE, "Test")


def write_metrics(folder: Path, metrics: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")


def write_report(folder: Path, metrics: dict, history: dict[str, list[float]]) -> None:
    """metrics.json and the two pictures into `folder`."""
    write_metrics(folder, metrics)
    write_plots(folder, metrics, history)


def write_config(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
