"""The trainer run with the environment its container image gives it (trainer/Dockerfile's
`ENV`), as the image's non-root user, with a read-only Keras home and no network.

No Docker engine runs here, so this is the closest proof that a Job on a cluster without
egress uses the ImageNet weights baked into the image instead of downloading 528 MB again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainer.sample_data import write_sample_data

# Root ignores file modes. Run the trainer without the capabilities that let it, so a 0555
# folder is read-only to it as to the image's UID 10001 (util-linux setpriv).
DROP_ROOT_OVERRIDES = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: any download attempt fails at once


def dockerfile_env(path: Path) -> dict[str, str]:
    """Every `ENV k=v ...` of a Dockerfile (line continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    env = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            for pair in line.strip()[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def write_legacy_vgg16_weights(path: Path, seed: int) -> str:
    """A random-weight VGG16 in the legacy HDF5 layout of Keras' ImageNet file; returns the
    trainer's fingerprint of its weights up to fc2."""
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    from trainer.model import FEATURE_LAYER, weights_fingerprint

    keras.utils.set_random_seed(seed)
    vgg = keras.applications.VGG16(include_top=True, weights=None)
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, vgg)
    fc2 = keras.Model(vgg.input, vgg.get_layer(FEATURE_LAYER).output)
    return weights_fingerprint(fc2)


@pytest.fixture
def world(tmp_path_factory):
    """A scratch folder, made writable again afterwards so it can be removed."""
    root = Path(tempfile.mkdtemp(prefix="container-env-"))
    yield root
    for p in root.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.vgg16
def test_trainer_uses_the_baked_imagenet_weights_read_only_and_offline(world):
    image_env = dockerfile_env(REPO / "trainer" / "Dockerfile")
    assert image_env["KERAS_HOME"] == "/opt/keras"  # what the test stands in for below
    keras_home = world / "opt-keras"
    weights = keras_home / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    expected = write_legacy_vgg16_weights(weights, seed=7)
    for folder in (keras_home, keras_home / "models"):
        folder.chmod(0o555)  # read-only, as on a read-only root filesystem
    weights.chmod(0o444)
    data, out, home = world / "data", world / "out", world / "home"
    write_sample_data(str(data), num_classes=2, per_class=3, seed=2, quiet=True)
    for folder in (out, home):
        folder.mkdir()

    env = {**image_env, "KERAS_HOME": str(keras_home), "FEATURE_CACHE": str(out / "cache"),
           "MPLCONFIGDIR": str(out / "matplotlib"), "HOME": str(home),
           "PATH": os.environ["PATH"], "HTTPS_PROXY": DEAD_PROXY, "HTTP_PROXY": DEAD_PROXY,
           "https_proxy": DEAD_PROXY, "http_proxy": DEAD_PROXY}
    keras_fallback = Path("/tmp/.keras")  # where Keras downloads when its home is read-only
    before = set(keras_fallback.glob("**/vgg16*"))
    wrapper = DROP_ROOT_OVERRIDES if os.geteuid() == 0 else []
    probe = subprocess.run([*wrapper, sys.executable, "-c",
                            f"import os; print(os.access({str(keras_home)!r}, os.W_OK))"],
                           capture_output=True, text=True, env=env, check=True)
    assert probe.stdout.strip() == "False", "the Keras home must be read-only for the trainer"
    proc = subprocess.run(
        [*wrapper, sys.executable, "-m", "trainer", "train", "--data", str(data), "--output",
         str(out / "models"), "--model-name", "m", "--epochs", "1", "--version", "1"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"ImageNet weights from {weights} (no download)" in proc.stderr
    assert "Downloading data from" not in proc.stderr + proc.stdout
    assert set(keras_fallback.glob("**/vgg16*")) == before
    assert not (home / ".keras" / "models").exists()
    manifest = json.loads((out / "models" / "m" / "1" / "_MANIFEST.json").read_text())
    assert manifest["base_model"]["weights"] == "imagenet"
    assert manifest["base_model"]["weights_sha256"] == expected  # that very file's weights
    assert sorted(p.name for p in (keras_home / "models").iterdir()) == [weights.name]


def test_every_path_the_trainer_image_sets_is_writable_or_read_only_by_design():
    """A plain `docker run ... train` must not crash on its own defaults: FEATURE_CACHE is
    created for the image's user; KERAS_HOME is only read."""
    text = (REPO / "trainer" / "Dockerfile").read_text()
    env = dockerfile_env(REPO / "trainer" / "Dockerfile")
    assert env["FEATURE_CACHE"].startswith("/cache/")
    assert re.search(r"mkdir -p /cache/features && chown -R \"\$\{UID\}:\$\{UID\}\" /cache",
                     text)
    assert env["MPLCONFIGDIR"].startswith("/tmp/")
