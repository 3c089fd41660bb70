"""Version labels in the store: `<models>/<name>/_LABELS.json`, next to the versions.

A small pointer object (`{"format": 1, "model_name": ..., "labels": {"stable": 17},
"history": {"stable": [12, 9]}}`), replaced whole with one atomic write, never edited in
place. `history` (optional) lists, newest first, the versions a label pointed at before: what
`serving rollback` goes back to, and what the puller keeps loaded so a rollback is instant.
TF Serving's own version labels (ModelConfig.version_labels) are the model for what a label
is: a name clients ask for instead of a number. This module is the one place that knows the
format: building it, and parsing it strictly (a hostile or broken file is refused with the
reason; readers keep what they had).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from contract.errors import InputError
from contract.names import LABELS_OBJECT, MAX_VERSION

FORMAT = 1
MAX_LABELS_BYTES = 64 * 1024  # a real one is a few hundred bytes; read at most one more
# The label promote moves and rollback moves back unless told otherwise.
DEFAULT_LABEL = "stable"
MAX_LABELS = 64
MAX_HISTORY = 10  # previous versions remembered per label
# Lower-case words, as TF Serving's examples ("stable", "canary"): a URL path segment.
LABEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class LabelsError(InputError, ValueError):
    """The labels object is malformed, too big, for another model, or names a bad version."""


@dataclass(frozen=True)
class Labels:
    model_name: str
    labels: dict[str, int]
    history: dict[str, list[int]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        body = {"format": FORMAT, "model_name": self.model_name,
                "labels": dict(sorted(self.labels.items()))}
        history = {k: v for k, v in sorted(self.history.items()) if v}
        if history:
            body["history"] = history
        return (json.dumps(body, indent=2) + "\n").encode()

    def previous(self, label: str) -> int | None:
        """The version `label` pointed at before its current one (rollback's target)."""
        return next(iter(self.history.get(label, [])), None)

    def moved(self, assignments: dict[str, int]) -> Labels:
        """These labels pointed at new versions; each old version heads its history."""
        labels, history = dict(self.labels), {k: list(v) for k, v in self.history.items()}
        for label, version in assignments.items():
            old = labels.get(label)
            if old is not None and old != version:
                kept = [old] + [v for v in history.get(label, []) if v not in (old, version)]
                history[label] = kept[:MAX_HISTORY]
            labels[label] = version
        return Labels(self.model_name, labels, history)

    def rolled_back(self, label: str) -> Labels:
        """`label` back to its previous version, which leaves the history."""
        previous = self.previous(label)
        if previous is None:
            raise LabelsError(f"label {label!r} has no previous version to roll back to")
        labels = {**self.labels, label: previous}
        history = {**self.history, label: self.history[label][1:]}
        return Labels(self.model_name, labels, history)

    def removed(self, names: list[str]) -> Labels:
        return Labels(self.model_name, {k: v for k, v in self.labels.items() if k not in names},
                      {k: v for k, v in self.history.items() if k not in names})

    def pinned(self) -> set[int]:
        """Every version a label names now or may roll back to next."""
        return set(self.labels.values()) | {h[0] for h in self.history.values() if h}


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
    if not isinstance(raw, dict) or not {"format", "model_name", "labels"} <= set(raw) or \
            not set(raw) <= {"format", "model_name", "labels", "history"}:
        raise LabelsError(f"{LABELS_OBJECT} must be an object with exactly format, "
                          "model_name, labels and (optionally) history")
    if raw["format"] != FORMAT or isinstance(raw["format"], bool):
        raise LabelsError(f"{LABELS_OBJECT}: unknown format {raw['format']!r}")
    if raw["model_name"] != model_name:
        raise LabelsError(f"{LABELS_OBJECT} is for model {raw['model_name']!r}, expected "
                          f"{model_name!r}")
    labels = raw["labels"]
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise LabelsError(f"{LABELS_OBJECT}: labels must be an object of at most {MAX_LABELS} "
                          "label: version entries")
    history = raw.get("history", {})
    if not isinstance(history, dict) or not set(history) <= set(labels) or any(
            not isinstance(v, list) or len(v) > MAX_HISTORY for v in history.values()):
        raise LabelsError(f"{LABELS_OBJECT}: history must map labels in use to lists of at "
                          f"most {MAX_HISTORY} versions")
    return Labels(model_name, {check_label(k): check_version(v, k) for k, v in labels.items()},
                  {k: [check_version(v, k) for v in vs] for k, vs in history.items()})


def read_labels(location, model_name: str) -> Labels:
    """The labels object beside the versions of `location` (a contract.storage.Location):
    none yet when there is no such object; LabelsError when it is refused."""
    try:
        data = location.read_bytes(LABELS_OBJECT, limit=MAX_LABELS_BYTES)
    except FileNotFoundError:
        return Labels(model_name, {})
    return parse_labels(data, model_name)


def parse_assignment(text: str) -> tuple[str, int]:
    """`stable=17` -> ("stable", 17), from the command line."""
    label, sep, version = text.partition("=")
    if not sep or not version.isascii() or not version.isdigit():
        raise LabelsError(f"{text!r}: expected LABEL=VERSION, e.g. stable=1764345600")
    return check_label(label), check_version(int(version), label)
