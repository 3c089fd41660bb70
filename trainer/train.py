"""Training the softmax head: on cached fc2 features, or (--no-cache) the notebook's way.

Both paths see the same batches in the same order: a seeded shuffle of image indices,
reshuffled every epoch, mapped to features (cached path) or to preprocessed images that go
through the frozen VGG16 inside `model.fit` (no-cache path). With the same seed they end
with the same head weights, up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from trainer.model import BaseModel, build_head, compile_for_training, full_model, head_model
from trainer.preprocessing import as_graph_code, preprocess_image_bytes


@dataclass
class FitResult:
    history: dict[str, list[float]]  # loss, accuracy, val_loss, val_accuracy per epoch
    head: keras.layers.Dense
    val_probabilities: np.ndarray  # [n_val, n_classes]


def batches(n: int, element, batch_size: int, seed: int | None) -> tf.data.Dataset:
    """Index dataset -> element(i) -> batches. Seeded shuffle when `seed` is not None."""
    ds = tf.data.Dataset.range(n)
    if seed is not None:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(as_graph_code(element), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _one_hot(labels: np.ndarray, num_classes: int) -> tf.Tensor:
    return tf.one_hot(labels, num_classes, dtype=tf.float32)


def _fit(model: keras.Model, train_ds, val_ds, epochs: int, verbose: int) -> dict:
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=verbose,
                        shuffle=False)  # the dataset is already shuffled, seeded
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def fit_on_features(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                    val_y: np.ndarray, num_classes: int, *, epochs: int, batch_size: int,
                    learning_rate: float, seed: int, verbose: int) -> FitResult:
    """The fast path: the head alone, on fc2 features computed once per image."""
    head = build_head(num_classes, seed)
    model = head_model(head, train_x.shape[1])
    compile_for_training(model, learning_rate)

    def dataset(x, y, shuffle_seed):
        xs, ys = tf.constant(x), _one_hot(y, num_classes)
        return batches(len(x), lambda i: (tf.gather(xs, i), tf.gather(ys, i)), batch_size,
                       shuffle_seed)

    history = _fit(model, dataset(train_x, train_y, seed), dataset(val_x, val_y, None),
                   epochs, verbose)
    probabilities = model.predict(val_x, batch_size=batch_size, verbose=0)
    return FitResult(history, head, probabilities)


def predict_features(head: keras.layers.Dense, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The trained head's probabilities for fc2 features."""
    return head_model(head, x.shape[1]).predict(x, batch_size=batch_size, verbose=0)


def predict_images(base: BaseModel, head: keras.layers.Dense, contents: list[bytes],
                   batch_size: int) -> np.ndarray:
    """The whole network's probabilities for encoded images (--no-cache)."""
    bs = tf.constant(contents, dtype=tf.string)
    ds = tf.data.Dataset.from_tensor_slices(bs).map(as_graph_code(preprocess_image_bytes)
                                                    ).batch(batch_size)
    return full_model(base, head).predict(ds, verbose=0)


def fit_end_to_end(base: BaseModel, train_contents: list[bytes], train_y: np.ndarray,
                   val_contents: list[bytes], val_y: np.ndarray, num_classes: int, *,
                   epochs: int, batch_size: int, learning_rate: float, seed: int,
                   verbose: int) -> FitResult:
    """--no-cache: the whole frozen network inside model.fit, every image through VGG16
    every epoch (the original notebook's way; kept to compare against)."""
    head = build_head(num_classes, seed)
    model = full_model(base, head)
    compile_for_training(model, learning_rate)

    def dataset(contents, y, shuffle_seed):
        bs, ys = tf.constant(contents, dtype=tf.string), _one_hot(y, num_classes)
        return batches(len(contents),
                       lambda i: (preprocess_image_bytes(tf.gather(bs, i)), tf.gather(ys, i)),
                       batch_size, shuffle_seed)

    val_ds = dataset(val_contents, val_y, None)
    history = _fit(model, dataset(train_contents, train_y, seed), val_ds, epochs, verbose)
    probabilities = model.predict(val_ds.map(as_graph_code(lambda x, _y: x)), verbose=0)
    return FitResult(history, head, probabilities)
