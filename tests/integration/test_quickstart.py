"""The README's quickstart ("your own photos, no S3, no Docker"), run verbatim.

The block is read from README.md and run by bash in a folder holding `photos/` (two classes
of generated images), `new-photos/` (held-out ones) and `.venv` (this environment), as a
newcomer's machine has it: an empty Keras cache and no network (a dead proxy makes any
download fail at once). `--weights auto` then trains on random VGG16 weights, and says so.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.test_container_env import DEAD_PROXY
from trainer.sample_data import write_sample_data

pytestmark = [pytest.mark.slow, pytest.mark.vgg16]
MARKER = "<!-- quickstart: tests/integration/test_quickstart.py runs this block verbatim -->"


def quickstart_block() -> str:
    readme = (REPO / "README.md").read_text()
    after = readme[readme.index(MARKER) + len(MARKER):]
    return re.match(r"\s*```sh\n(.*?)```", after, re.S).group(1)


def free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_readme_quickstart_runs_as_written(tmp_path):
    block = quickstart_block()
    assert block.count("\n") == 5  # five lines, as promised
    if not (free(8500) and free(8501)):
        pytest.skip("the quickstart uses the default ports 8500/8501, which are taken here")
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix))
    write_sample_data(str(work / "photos"), num_classes=2, per_class=6, seed=21, quiet=True)
    write_sample_data(str(tmp_path / "held-out"), num_classes=2, per_class=2, seed=22,
                      quiet=True)
    (work / "new-photos").mkdir()
    for photo in (tmp_path / "held-out").glob("*/*"):  # one flat folder, as a user has it
        photo.rename(work / "new-photos" / photo.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "KERAS"))}
    env.update(KERAS_HOME=str(tmp_path / "empty-keras-home"), HTTPS_PROXY=DEAD_PROXY,
               HTTP_PROXY=DEAD_PROXY, PYTHONPATH=str(REPO))
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Training on RANDOM VGG16 weights" in proc.stderr  # offline, and said so
    assert "Downloading data from" not in proc.stdout  # Keras' own lines: stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("new-photos/")]
    held_out = sorted(f"new-photos/{p.name}" for p in (work / "new-photos").iterdir())
    assert sorted(r[0] for r in rows) == held_out and len(held_out) == 4
    assert all(r[1] in ("circle", "square") for r in rows), proc.stdout
    [version] = (work / "models" / "mine").iterdir()  # the published version...
    manifest = json.loads((version / "_MANIFEST.json").read_text())
    assert manifest["base_model"]["weights"] == "none"  # ...says which weights it has
