"""The models.config the puller writes for the model server, from the labels in the store.

TF Serving's ModelServerConfig text proto (`--model_config_file`, re-read every
`--model_config_file_poll_wait_seconds`). Without labels it is the static
`serving/config/models.config` (latest version). With labels, a `specific` version policy
lists the versions the labels need and `version_labels` maps them.

Moving a label follows TF Serving's own rule (model_servers/server_core.cc,
UpdateModelVersionLabelMap; g3doc/serving_config.md): a label already in use may only move to
a version that is loaded, or the whole reload is refused. So a move to a version the server
does not have yet takes two writes: first the new version joins the list while the label
stays (the server loads it), and on a later sync the label moves and the old version leaves.
TF Serving refuses the second write until the version is AVAILABLE and retries it on every
poll; the development server does the same. A new label may name a version still loading
(`--allow_version_labels_for_unavailable_models`), which is what a fresh start needs.

The file carries what it serves in one comment line (`# puller-state: {...}`), so a
restarted puller continues from what the server was given.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

STATE_PREFIX = "# puller-state: "
LATEST_VERSIONS = 1  # without labels, as serving/config/models.config


@dataclass(frozen=True)
class Served:
    """What the server is told: the versions (None: the latest one) and the labels."""

    versions: tuple[int, ...] | None
    labels: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"versions": list(self.versions) if self.versions is not None
                           else None, "labels": dict(sorted(self.labels.items()))},
                          separators=(",", ":"))


def next_step(written: Served | None, desired: Served) -> Served:
    """What to write now to get from `written` to `desired` without the server refusing it
    or dropping a request: labels in use that would move to a version the server was not
    yet given stay where they are for one more sync, with both versions listed."""
    if written is None or desired.versions is None or written.versions is None:
        # A fresh start (every label is new), or a switch between latest and labels.
        return desired
    waiting = {label: written.labels[label] for label, version in desired.labels.items()
               if label in written.labels and written.labels[label] != version
               and version not in written.versions}
    if not waiting:
        return desired
    versions = sorted(set(desired.versions) | set(written.versions))
    return Served(tuple(versions), {**desired.labels, **waiting})


def render(model_name: str, base_path: str, served: Served) -> str:
    lines = [
        "# Written by `serving pull` from the labels in the store (serving/server_config.py);",
        "# the model server re-reads it (--model_config_file_poll_wait_seconds).",
        STATE_PREFIX + served.to_json(),
        "model_config_list {",
        "  config {",
        f"    name: {json.dumps(model_name)}",
        f"    base_path: {json.dumps(base_path)}",
        '    model_platform: "tensorflow"',
        "    model_version_policy {",
    ]
    if served.versions is None:
        lines += ["      latest {", f"        num_versions: {LATEST_VERSIONS}", "      }"]
    else:
        lines += ["      specific {"] + [f"        versions: {v}" for v in served.versions] \
            + ["      }"]
    lines += ["    }"]
    for label, version in sorted(served.labels.items()):
        lines += ["    version_labels {", f"      key: {json.dumps(label)}",
                  f"      value: {version}", "    }"]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def read_state(path: Path) -> Served | None:
    """What a previous run wrote, or None (no file, or not one of ours)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if line.startswith(STATE_PREFIX):
            try:
                raw = json.loads(line[len(STATE_PREFIX):])
                versions = raw["versions"]
                return Served(None if versions is None else tuple(int(v) for v in versions),
                              {str(k): int(v) for k, v in raw["labels"].items()})
            except (ValueError, KeyError, TypeError, AttributeError):
                return None
    return None


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # the server may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
