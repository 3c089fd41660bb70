"""The one image preprocessing function, used by training AND inside the exported graph.

Training and serving must never disagree on preprocessing, so this module is the only place
that decodes, converts, resizes or normalises an image. Change anything here and bump
PREPROCESSING_VERSION: it is part of every feature-cache key and of the manifest.
"""

import keras
import tensorflow as tf

IMAGE_SIZE = (224, 224)  # VGG16 with its fully connected top takes exactly 224x224
PREPROCESSING = "vgg16"  # manifest "input.preprocessing"
PREPROCESSING_VERSION = "vgg16-bilinear-aa-v1"


def decode_and_resize(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar string) -> float32 RGB [224, 224, 3] in 0..255.

    Grayscale, palette, RGBA and CMYK become RGB (alpha dropped); animated GIFs use their first
    frame. Undecodable bytes raise InvalidArgumentError, which TF Serving reports as a client
    error (HTTP 400 / INVALID_ARGUMENT).
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    # Antialiasing keeps large photos from aliasing when shrunk to 224 px.
    image = tf.image.resize(image, IMAGE_SIZE, method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def vgg_preprocess(pixels: tf.Tensor) -> tf.Tensor:
    """RGB pixels in 0..255 (any leading dims) -> VGG16 input (BGR, ImageNet mean removed)."""
    return keras.applications.vgg16.preprocess_input(tf.cast(pixels, tf.float32))


def preprocess_image_bytes(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes -> VGG16 input tensor [224, 224, 3]. THE preprocessing function."""
    return vgg_preprocess(decode_and_resize(image_bytes))
