"""The README's quickstart ("your own photos, no S3, no Docker"), run verbatim.

The block is read from README.md and run by bash in a folder holding `photos/` (two classes
of generated images) and `.venv` (this environment). The quickstart trains with the default
`--weights imagenet`; with no network here, Keras' cache holds a random-weight VGG16 in the
ImageNet file's place (as the trainer image's baked copy would be), and any download attempt
would fail at once.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.test_container_env import DEAD_PROXY, write_legacy_vgg16_weights
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
    keras_home = tmp_path / "keras"
    write_legacy_vgg16_weights(
        keras_home / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels.h5", seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env.update(KERAS_HOME=str(keras_home), HTTPS_PROXY=DEAD_PROXY, HTTP_PROXY=DEAD_PROXY,
               PYTHONPATH=str(REPO))
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("photos/")]
    jpgs = sorted(str(p.relative_to(work)) for p in (work / "photos").glob("*/*.jpg"))
    assert sorted(r[0] for r in rows) == jpgs and jpgs
    assert all(r[1] in ("circle", "square") for r in rows)
    assert list((work / "models" / "mine").iterdir())  # the published version
