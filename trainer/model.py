"""The network: a frozen base up to fc2, and the one new softmax layer that is trained.

This is the classic transfer-learning recipe (ml4a guide): keep VGG16 with its ImageNet
weights, freeze every layer, and connect a new softmax over the user's classes to the
second-to-last layer (fc2, 4096 features).

The base is VGG16 by default (`--base-model vgg16`, with `--weights`). Any Keras model file
whose interface is VGG16's can take its place (`--base-model FILE`): a 224x224x3 input fed
VGG16-preprocessed images, and a layer named `fc2` giving one feature vector per image, of
any width. A VGG16 fine-tuned earlier is one; the tests' tiny VGG16-shaped network is another.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from contract.errors import InputError, StorageError
from trainer.config import VGG16
from trainer.precision import KERAS_POLICY
from trainer.preflight import check_weights_file
from trainer.preprocessing import IMAGE_SIZE

log = logging.getLogger(__name__)

FEATURE_LAYER = "fc2"
FEATURE_DIM = 4096  # VGG16's fc2; another base's width is read from its fc2 layer
HEAD_NAME = "classifier"
# fc1's kernel is 411 MB: converting it to numpy in one piece took 2.8 s on a 2-core machine
# against 0.4 s in 16 MB row slices (the same bytes in the same order: the same digest).
FINGERPRINT_CHUNK_BYTES = 16 << 20
# Where keras.applications.VGG16(weights="imagenet") keeps its download, under Keras' home
# (KERAS_HOME, else ~/.keras): the trainer image bakes the file in there at build time.
IMAGENET_FILE = "models/vgg16_weights_tf_dim_ordering_tf_kernels.h5"


@dataclass
class BaseModel:
    """The base network up to fc2, frozen, with what identifies it and its weights."""

    features: keras.Model  # image (preprocessed) -> fc2 features
    weights: str  # "imagenet", "none", or the path/URI they were loaded from
    weights_sha256: str  # sha256 over the weight tensors up to fc2, in layer order
    name: str = VGG16  # "vgg16", or the name a base model file gives its network
    source: str = VGG16  # --base-model: "vgg16" or the file's path/URI

    @property
    def feature_dim(self) -> int:
        """fc2's width: 4096 for VGG16, whatever the file's fc2 has otherwise."""
        return int(self.features.output.shape[-1])

    def describe(self) -> dict:
        """What the manifest and metrics.json record about the base."""
        return {"name": self.name, "source": self.source, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "feature_dim": self.feature_dim}


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 over every weight tensor of `model`, in order: identical weights, identical hash.

    Hashing the loaded tensors (not the file) makes the fingerprint the same whether the
    weights came from Keras' ImageNet download, a local .h5 or an s3:// copy of it.
    """
    h = hashlib.sha256()
    for w in model.weights:
        value = w.value  # the backend variable; slices of it are read without a whole copy
        shape = tuple(value.shape)
        h.update(f"{np.dtype(w.dtype)}{shape}".encode())
        rows = max(1, FINGERPRINT_CHUNK_BYTES // max(1, value.dtype.size * math.prod(shape[1:])))
        for start in range(0, shape[0] if shape else 1, rows):
            chunk = value[start:start + rows] if shape else value
            h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(chunk)).data)
    return h.hexdigest()


def _fetch_file(uri: str, workdir: Path, flag: str = "--weights") -> str:
    """A local path for a --weights or --base-model PATH or s3://...; a clear error when it
    is not there."""
    if uri.startswith("s3://"):
        from contract.storage import open_location

        loc = open_location(uri)
        parent, _, name = loc.uri.rpartition("/")
        local = workdir / name
        open_location(parent).download_file(name, local)
        return str(local)
    return str(check_weights_file(uri, flag))


def imagenet_weights_file() -> Path | None:
    """The ImageNet weights file already in Keras' cache, if it is there.

    Keras' own `get_file` wants its cache folder writable: on a read-only root filesystem it
    silently switches to /tmp/.keras and downloads all 528 MB again (keras/src/utils/
    file_utils.py, `os.access(datadir_base, os.W_OK)`). Loading a present file directly
    keeps the baked copy in use and the run off the network.
    """
    from keras.src.backend.config import keras_home

    path = Path(keras_home()).expanduser() / IMAGENET_FILE
    return path if path.is_file() else None


def build_base(weights: str | None, seed: int, base_model: str = VGG16) -> BaseModel:
    """The base cut at fc2 and frozen: VGG16 (include_top=True) with the requested weights,
    or the network of a base model file (`weights` None: the file's own)."""
    # Seeds Python, NumPy, TensorFlow and Keras for the run: the shuffles and the head's
    # initial weights (and with --weights none, VGG16's) depend on --seed alone, whatever
    # the process did before.
    keras.utils.set_random_seed(seed)
    if base_model != VGG16:
        return _load_base_file(base_model)
    if weights in ("imagenet", "auto") and (baked := imagenet_weights_file()) is not None:
        log.info("ImageNet weights from %s (no download)", baked)
        weights = "imagenet"
        try:
            vgg = keras.applications.VGG16(include_top=True, weights=str(baked))
        except Exception as e:  # h5py/Keras raise OSError, ValueError, KeyError...
            raise InputError(f"ImageNet weights file {baked} cannot be loaded "
                             f"({type(e).__name__}: {e}); delete it to download again") from e
    elif weights in ("imagenet", "auto"):
        try:
            # Keras prints "Downloading data from ..." and its progress bar to stdout: they
            # go to stderr, with the other progress, and stdout keeps only results.
            with contextlib.redirect_stdout(sys.stderr):
                vgg = keras.applications.VGG16(include_top=True, weights="imagenet")
            weights = "imagenet"
        except Exception as e:  # Keras raises plain Exception("URL fetch failure ...")
            if weights == "imagenet":
                raise StorageError(
                    "cannot download the ImageNet VGG16 weights "
                    f"({type(e).__name__}: {e}); the trainer image has them built in; or "
                    "use --weights auto (random weights when offline), none, or a local "
                    "file") from e
            _warn_random_weights(f"{type(e).__name__}: {e}")
            weights = "none"
            vgg = keras.applications.VGG16(include_top=True, weights=None)
    elif weights == "none":
        vgg = keras.applications.VGG16(include_top=True, weights=None)
    else:
        with tempfile.TemporaryDirectory(prefix="weights-") as tmp:
            local = _fetch_file(weights, Path(tmp))
            vgg = keras.applications.VGG16(include_top=True, weights=None)
            try:
                vgg.load_weights(local)
            except Exception as e:  # h5py/Keras raise OSError, ValueError, KeyError...
                raise InputError(f"--weights {weights}: not a VGG16 weights file "
                                 f"({type(e).__name__}: {e})") from e
    features = _frozen(keras.Model(vgg.input, vgg.get_layer(FEATURE_LAYER).output,
                                   name="vgg16_fc2"))
    return BaseModel(features=features, weights=weights,
                     weights_sha256=weights_fingerprint(features))


def _warn_random_weights(reason: str) -> None:
    """--weights auto without ImageNet's: said where nobody can miss it, quiet or not."""
    line = "!" * 78
    print(f"{line}\n!! --weights auto: the ImageNet weights cannot be downloaded "
          f"({reason[:80]}).\n!! Training on RANDOM VGG16 weights: the same pipeline, far "
          f"weaker features.\n!! The manifest records weights 'none'. With network access, "
          f"run again.\n{line}", file=sys.stderr, flush=True)
    log.warning("--weights auto: ImageNet weights unavailable (%s); random VGG16 weights",
                reason)


def _frozen(model: keras.Model) -> keras.Model:
    for layer in model.layers:
        layer.trainable = False
    model.trainable = False
    return model


def _load_base_file(uri: str) -> BaseModel:
    """A Keras model file (.keras, or a legacy .h5 whole-model file) with VGG16's interface,
    cut at its fc2 layer. Loaded in Keras' safe mode: a file cannot run code of its own."""
    with tempfile.TemporaryDirectory(prefix="base-model-") as tmp:
        local = _fetch_file(uri, Path(tmp), "--base-model")
        try:
            model = keras.saving.load_model(local, compile=False, safe_mode=True)
        except Exception as e:  # Keras and h5py raise ValueError, OSError, TypeError...
            raise InputError(f"--base-model {uri}: not a Keras model file this Keras can "
                             f"load ({type(e).__name__}: {e})") from e
    features = _frozen(keras.Model(model.inputs, base_interface(model, uri),
                                   name=f"{model.name}_fc2"))
    return BaseModel(features=features, weights=uri, weights_sha256=weights_fingerprint(features),
                     name=model.name, source=uri)


def base_interface(model: keras.Model, uri: str):
    """fc2's output, once `model` is known to have VGG16's interface: one 224x224x3 float
    input and a layer `fc2` with one feature vector per image. Else one clear InputError."""
    def refuse(what: str) -> InputError:
        return InputError(f"--base-model {uri}: {what}; a base needs VGG16's interface (one "
                          f"input of shape (None, {IMAGE_SIZE[0]}, {IMAGE_SIZE[1]}, 3) and a "
                          f"layer named {FEATURE_LAYER!r} giving one feature vector per image)")

    shapes = [tuple(t.shape) for t in model.inputs]
    if shapes != [(None, *IMAGE_SIZE, 3)]:
        raise refuse(f"its input shape is {', '.join(map(str, shapes)) or 'unknown'}")
    try:
        layer = model.get_layer(FEATURE_LAYER)
    except ValueError as e:
        raise refuse(f"it has no layer named {FEATURE_LAYER!r}") from e
    output = layer.output
    if len(output.shape) != 2 or not output.shape[-1]:
        raise refuse(f"its {FEATURE_LAYER!r} layer gives shape {tuple(output.shape)}")
    return output


def build_head(num_classes: int, seed: int) -> keras.layers.Dense:
    """The only trained layer: softmax over the classes, on fc2's 4096 features."""
    return keras.layers.Dense(
        num_classes, activation="softmax", name=HEAD_NAME,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed))


def head_model(head: keras.layers.Dense, feature_dim: int) -> keras.Model:
    """fc2 features -> class probabilities (what the cached path trains)."""
    inputs = keras.Input((feature_dim,), name="fc2_features")
    return keras.Model(inputs, head(inputs), name="head")


def full_model(base: BaseModel, head: keras.layers.Dense) -> keras.Model:
    """Preprocessed image -> class probabilities: the frozen base to fc2, then the head."""
    inputs = keras.Input((*IMAGE_SIZE, 3), name="image")
    return keras.Model(inputs, head(base.features(inputs)), name="vgg16_transfer")


def compile_for_training(model: keras.Model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss="categorical_crossentropy", metrics=["accuracy"])


def feature_function(base: BaseModel, precision: str = "float32"):
    """A traced-once function for feature extraction (fixed signature: no retracing), in
    `precision` (trainer.precision); it returns float32 features either way.

    For bfloat16 the layers compute under Keras' `mixed_bfloat16` policy while the function
    is traced, and are put back to float32 right after: the traced graph keeps bfloat16
    arithmetic, the weights stay shared and float32, and the model exported later computes
    in float32."""
    spec = tf.TensorSpec([None, *IMAGE_SIZE, 3], tf.float32)

    @tf.function(input_signature=[spec])
    def extract(images):
        return tf.cast(base.features(images, training=False), tf.float32)

    if precision == "float32":
        return extract
    layers = [base.features, *base.features.layers]
    saved = [layer.dtype_policy for layer in layers]
    try:
        for layer in layers:
            layer.dtype_policy = KERAS_POLICY[precision]
        extract.get_concrete_function()  # traced now, with the bfloat16 policy
    finally:
        for layer, policy in zip(layers, saved, strict=True):
            layer.dtype_policy = policy
    return extract
