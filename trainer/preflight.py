"""Checks that take seconds and save a run: everything a training run needs is usable before
it reads an image, builds VGG16 or computes a feature.

A missing output bucket, an unwritable cache, a weights file that is not there or a version
that is already published used to be found after the whole run (the weights loaded, every
image read and its features computed). Each now fails at once, with the run's own one-line
error and exit code (2 bad input, 3 storage or credentials).
"""

from __future__ import annotations

from pathlib import Path

from contract.errors import InputError, UserError
from contract.manifest import MANIFEST_FILE
from contract.storage import open_location
from trainer.config import TrainConfig


def _about(flag: str, value: str, check) -> None:
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
    _about("--output", config.output, models.check_writable)
    if config.version is not None and \
            models.child(str(config.version)).exists(MANIFEST_FILE):
        raise InputError(f"version {config.version} of model {config.model_name!r} already "
                         f"exists at {models.child(str(config.version)).uri}; published "
                         "versions are never overwritten (choose another --version)")
    if config.cache is not None:
        cache = open_location(config.cache)
        _about("--cache", config.cache, cache.check_writable)
    if config.weights not in ("imagenet", "none"):
        _check_weights_file(config.weights)


def _check_weights_file(weights: str) -> None:
    if weights.startswith("s3://"):
        parent, _, name = weights.rstrip("/").rpartition("/")
        if not open_location(parent).exists(name):
            raise InputError(f"--weights {weights}: no such object")
        return
    if not Path(weights.removeprefix("file://")).expanduser().is_file():
        raise InputError(f"--weights {weights}: no such file (expected 'imagenet', 'none', "
                         "or a Keras .h5/.weights.h5 file)")
