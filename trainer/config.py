"""The training configuration: one frozen dataclass the CLI fills in.

Its resolved form is saved next to the model it produced (assets.extra/report/config.json).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from contract.errors import InputError
from trainer.precision import CHOICES as PRECISION_CHOICES

# Defaults follow the classic recipe (ml4a transfer-learning guide, Keras docs).
DEFAULT_EPOCHS = 10  # the head is one Dense layer: it converges in a few passes
DEFAULT_BATCH_SIZE = 32  # fits VGG16 activations in a few GB of RAM/VRAM
DEFAULT_LEARNING_RATE = 0.001  # Adam's default
DEFAULT_VAL_SPLIT = 0.2  # 80/20, stratified per class
DEFAULT_SEED = 0
# Cache hits recomputed each run: this fraction of them, and never fewer than the count. An
# attacker who poisons k entries is caught with probability 1 - (1 - fraction)^k: 5% finds
# 10 poisoned entries 40% of the time, 50 of them 92%; a cache poisoned at scale at once.
DEFAULT_CACHE_CHECK = 8
DEFAULT_CACHE_CHECK_FRACTION = 0.05
# Model names become URL path segments (/v1/models/<name>) and k8s-friendly labels.
WEIGHT_FILE_SUFFIXES = (".h5", ".weights.h5", ".hdf5")
# VGG16's own weight choices, no file needed. auto: ImageNet's when they can be had (cached
# or downloaded), otherwise random ones with a loud warning (a first run offline).
VGG16_WEIGHTS = ("imagenet", "auto", "none")
VGG16 = "vgg16"  # --base-model's default (trainer.model builds it)
BASE_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")  # Keras 3 files, legacy whole-model HDF5
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    output: str
    model_name: str
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = DEFAULT_LEARNING_RATE
    val_split: float = DEFAULT_VAL_SPLIT
    seed: int = DEFAULT_SEED
    base_model: str = VGG16  # or a Keras model file with VGG16's interface
    weights: str | None = None  # VGG16's: None means imagenet; a base file carries its own
    cache: str | None = None  # None: --no-cache, train the notebook's way
    min_val_accuracy: float = 0.0
    test_split: float = 0.0  # 0: no test set (the default, as before)
    min_test_accuracy: float = 0.0
    version: int | None = None  # None: UTC unix seconds at publish
    report_dir: str | None = None
    require_gpu: bool = False  # fail (exit 3) rather than train on the CPU
    signing_key: str | None = None  # PEM EC private key: sign the version (model.sig)
    cache_check: int = DEFAULT_CACHE_CHECK  # random cache hits recomputed each run, at least
    cache_check_fraction: float = DEFAULT_CACHE_CHECK_FRACTION  # ... and this share of them
    precision: str = "auto"  # the feature pass's: auto (per device), float32, bfloat16
    quiet: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", resolve_weights(self.base_model, self.weights))
        if not MODEL_NAME_RE.match(self.model_name):
            raise InputError(f"--model-name {self.model_name!r}: use 1-63 letters, digits, '_', "
                             "'.' or '-', starting with a letter or digit")
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"--learning-rate must be positive, got {self.learning_rate}"),
            (0 < self.val_split < 1, f"--val-split must be between 0 and 1, got {self.val_split}"),
            (0 <= self.min_val_accuracy <= 1,
             f"--min-val-accuracy must be between 0 and 1, got {self.min_val_accuracy}"),
            (0 <= self.test_split < 1 and self.val_split + self.test_split < 1,
             f"--test-split must be at least 0 and leave images to train on (with "
             f"--val-split {self.val_split}), got {self.test_split}"),
            (0 <= self.min_test_accuracy <= 1,
             f"--min-test-accuracy must be between 0 and 1, got {self.min_test_accuracy}"),
            (self.cache_check >= 0,
             f"--cache-check must be 0 or more, got {self.cache_check}"),
            (0 <= self.cache_check_fraction <= 1,
             f"--cache-check-fraction must be between 0 and 1, got "
             f"{self.cache_check_fraction}"),
            (self.min_test_accuracy == 0 or self.test_split > 0,
             "--min-test-accuracy needs a test set: give --test-split too"),
            (self.precision in PRECISION_CHOICES,
             f"--precision {self.precision}: expected one of {', '.join(PRECISION_CHOICES)}"),
            (self.cache is not None or self.precision in ("auto", "float32"),
             f"--precision {self.precision} applies to the cached feature pass; --no-cache "
             "trains the whole network in float32"),
            (self.version is None or self.version > 0,
             f"--version must be a positive integer, got {self.version}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def resolved(self, version: int) -> TrainConfig:
        return dataclasses.replace(self, version=version)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def resolve_weights(base_model: str, weights: str | None) -> str | None:
    """--weights as it applies to --base-model (train and extract alike): VGG16's choice,
    "imagenet" when none is given; None for a base model file, which carries its own."""
    if base_model != VGG16:
        if not base_model.lower().endswith(BASE_FILE_SUFFIXES):
            raise InputError(f"--base-model {base_model}: expected {VGG16!r} or a Keras model "
                             f"file ending in {', '.join(BASE_FILE_SUFFIXES)}")
        if weights is not None:
            raise InputError(f"--weights {weights}: a --base-model file carries its own "
                             "weights; --weights applies to --base-model vgg16")
        return None
    weights = weights or "imagenet"
    if weights not in VGG16_WEIGHTS and not weights.lower().endswith(WEIGHT_FILE_SUFFIXES):
        raise InputError(f"--weights {weights}: expected 'imagenet', 'auto', 'none', or a "
                         f"Keras weights file ending in {', '.join(WEIGHT_FILE_SUFFIXES)}")
    return weights
