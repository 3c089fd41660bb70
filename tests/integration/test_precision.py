"""The bfloat16 feature pass: really bfloat16, close to float32, and leaves the model float32."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer.features import image_batches
from trainer.model import build_base, feature_function
from trainer.precision import FEATURE_TOLERANCE
from trainer.preprocessing import preprocess_image_bytes
from trainer.sample_data import write_sample_data

pytestmark = pytest.mark.vgg16


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    data = tmp_path_factory.mktemp("precision")
    write_sample_data(str(data), num_classes=2, per_class=4, seed=2, quiet=True)
    images = [p.read_bytes() for p in sorted(data.rglob("*.jpg"))]
    [(_, pixels)] = list(image_batches(images, preprocess_image_bytes, 8))
    return pixels


def bfloat16_ops(fn) -> int:
    graph = fn.get_concrete_function().graph
    return sum(1 for op in graph.get_operations()
               if any(t.dtype == tf.bfloat16 for t in op.outputs))


def test_bfloat16_features_are_close_to_float32_and_the_model_stays_float32(batch):
    base = build_base("none", seed=4)
    fp32 = feature_function(base, "float32")
    reference = fp32(batch).numpy()
    bf16 = feature_function(base, "bfloat16")
    assert bfloat16_ops(fp32) == 0 and bfloat16_ops(bf16) > 30  # every conv and dense layer
    approx = bf16(batch).numpy()
    assert approx.dtype == np.float32 and approx.shape == reference.shape
    # Within the spot check's bfloat16 tolerance of float32, per image, but not identical.
    scale = np.maximum(np.abs(reference).max(axis=1), 1.0)
    worst = (np.abs(approx - reference).max(axis=1) / scale).max()
    assert 0 < worst < FEATURE_TOLERANCE["bfloat16"], worst
    # Tracing in bfloat16 left every layer float32: the next float32 pass, and the model the
    # trainer exports, compute exactly as before.
    assert {layer.dtype_policy.name for layer in base.features.layers} == {"float32"}
    assert np.array_equal(feature_function(base, "float32")(batch).numpy(), reference)
    eager = base.features(batch, training=False).numpy()
    assert (np.abs(eager - reference).max(axis=1) / scale).max() < 1e-5
