"""The weights fingerprint that keys the feature cache: stable, and sensitive to any weight."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest

from trainer import model as model_module
from trainer.model import weights_fingerprint


def whole_array_digest(model: keras.Model) -> str:
    """The fingerprint computed the obvious way, one whole array per weight."""
    h = hashlib.sha256()
    for w in model.weights:
        arr = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.data)
    return h.hexdigest()


def small_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(5, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(7, name="dense")(x))


@pytest.mark.parametrize("chunk_bytes", [1, 100, 4096, 16 << 20])
def test_chunked_fingerprint_equals_whole_array_digest(monkeypatch, chunk_bytes):
    # Feature caches written before chunking stay valid only if the digest is unchanged.
    monkeypatch.setattr(model_module, "FINGERPRINT_CHUNK_BYTES", chunk_bytes)
    m = small_model()
    assert weights_fingerprint(m) == whole_array_digest(m)


def test_fingerprint_changes_with_one_weight():
    m = small_model()
    before = weights_fingerprint(m)
    kernel = m.get_layer("dense").kernel
    changed = keras.ops.convert_to_numpy(kernel).copy()
    changed[-1, -1] += 1e-3
    kernel.assign(changed)
    assert weights_fingerprint(m) != before
