"""Checks that take seconds and save a run: everything a training run needs is usable before
it reads an image, builds VGG16 or computes a feature.

A missing output bucket, an unwritable cache, a weights file that is not there or a version
that is already published used to be found after the whole run (the weights loaded, every
image read and its features computed). Each now fails at once, with the run's own one-line
error and exit code (2 bad input, 3 storage or credentials). The CLI runs these before it
imports TensorFlow; `trainer.job.run` expects a configuration that passed them.
"""

from __future__ import annotations

from pathlib import Path

from contract.errors import InputError, UserError
from contract.manifest import MANIFEST_FILE
from contract.storage import open_location
from trainer.config import VGG16, VGG16_WEIGHTS, TrainConfig
from trainer.publish import already_published


def about(flag: str, value: str, check) -> None:
    """Run `check`, prefixing any user error with the flag and value it concerns."""
    try:
        check()
    except UserError as e:
        raise type(e)(f"{flag} {value}: {e}") from e


def preflight(config: TrainConfig) -> None:
    data = open_location(config.data)
    if data.is_empty():
        raise InputError(f"--data {config.data}: location does not exist or is empty")
    models = open_location(config.output).child(config.model_name)
    about("--output", config.output, models.check_writable)
    if config.version is not None:
        version = models.child(str(config.version))
        if version.exists(MANIFEST_FILE):
            raise already_published(config.model_name, config.version, version.uri)
    if config.cache is not None:
        cache = open_location(config.cache)
        about("--cache", config.cache, cache.check_writable)
    check_base_files(config.base_model, config.weights)
    if config.signing_key is not None:
        from contract.signing import SigningKey

        SigningKey.load(config.signing_key)


def check_base_files(base_model: str, weights: str | None) -> None:
    """The --base-model file, or the --weights file, is there (VGG16's own choices need no
    file)."""
    if base_model != VGG16:
        check_weights_file(base_model, "--base-model")
    elif weights not in VGG16_WEIGHTS:
        check_weights_file(weights)


def check_weights_file(uri: str, flag: str = "--weights") -> Path | None:
    """A --weights (or --base-model) file or s3:// object is there; returns the local path
    for a file."""
    if uri.startswith("s3://"):
        parent, _, name = uri.rstrip("/").rpartition("/")
        if not open_location(parent).exists(name):
            raise InputError(f"{flag} {uri}: no such object")
        return None
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.is_file():
        expected = ("'vgg16' or a Keras model file (.keras, .h5)" if flag == "--base-model"
                    else "'imagenet', 'auto', 'none', or a Keras .h5/.weights.h5 file")
        raise InputError(f"{flag} {uri}: no such file (expected {expected})")
    return path
