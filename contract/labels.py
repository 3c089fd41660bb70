"""Version labels in the store: `<models>/<name>/_LABELS.json`, next to the versions.

A small pointer object (`{"format": 1, "model_name": ..., "labels": {"stable": 17}}`),
replaced whole with one atomic write, never edited in place. TF Serving's own version labels
(ModelConfig.version_labels) are the model for what a label is: a name clients ask for
instead of a number. This module is the one place that knows the format: building it, and
parsing it strictly (a hostile or broken file is refused with the reason; readers keep what
they had).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from contract.names import LABELS_OBJECT, MAX_VERSION

FORMAT = 1
MAX_LABELS_BYTES = 64 * 1024  # a real one is a few hundred bytes
MAX_LABELS = 64
# Lower-case words, as TF Serving's examples ("stable", "canary"): a URL path segment.
LABEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class LabelsError(ValueError):
    """The labels object is malformed, too big, for another model, or names a bad version."""


@dataclass(frozen=True)
class Labels:
    model_name: str
    labels: dict[str, int]

    def to_bytes(self) -> bytes:
        return (json.dumps({"format": FORMAT, "model_name": self.model_name,
                            "labels": dict(sorted(self.labels.items()))}, indent=2)
                + "\n").encode()


def check_label(name: str) -> str:
    if not isinstance(name, str) or not LABEL_RE.match(name):
        raise LabelsError(f"label {name!r}: use a lower-case letter, then up to 62 lower-case "
                          "letters, digits, '_' or '-'")
    return name


def check_version(value, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_VERSION:
        raise LabelsError(f"label {label!r} names {value!r}, not a version number "
                          f"(1 to {MAX_VERSION})")
    return value


def parse_labels(data: bytes, model_name: str) -> Labels:
    """Strict: anything but exactly the format is refused (LabelsError, with the reason)."""
    if len(data) > MAX_LABELS_BYTES:
        raise LabelsError(f"{LABELS_OBJECT} has {len(data)} bytes (at most {MAX_LABELS_BYTES})")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise LabelsError(f"{LABELS_OBJECT} is not JSON ({type(e).__name__})") from None
    if not isinstance(raw, dict) or set(raw) != {"format", "model_name", "labels"}:
        raise LabelsError(f"{LABELS_OBJECT} must be an object with exactly format, "
                          "model_name and labels")
    if raw["format"] != FORMAT or isinstance(raw["format"], bool):
        raise LabelsError(f"{LABELS_OBJECT}: unknown format {raw['format']!r}")
    if raw["model_name"] != model_name:
        raise LabelsError(f"{LABELS_OBJECT} is for model {raw['model_name']!r}, expected "
                          f"{model_name!r}")
    labels = raw["labels"]
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise LabelsError(f"{LABELS_OBJECT}: labels must be an object of at most {MAX_LABELS} "
                          "label: version entries")
    return Labels(model_name, {check_label(k): check_version(v, k) for k, v in labels.items()})


def parse_assignment(text: str) -> tuple[str, int]:
    """`stable=17` -> ("stable", 17), from the command line."""
    label, sep, version = text.partition("=")
    if not sep or not version.isascii() or not version.isdigit():
        raise LabelsError(f"{text!r}: expected LABEL=VERSION, e.g. stable=1764345600")
    return check_label(label), check_version(int(version), label)
