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
# Largest image accepted (width x height): a 100 MP photo decodes to 300 MB. Bigger declared
# sizes are refused before decoding, so a few-KB "decompression bomb" cannot exhaust memory.
MAX_IMAGE_PIXELS = 100_000_000
_HEADER_BYTES = 32


def _uint(header: tf.Tensor, start: int, size: int, big_endian: bool) -> tf.Tensor:
    digits = tf.cast(header[start:start + size], tf.int64)
    weights = [256 ** (size - 1 - i) if big_endian else 256 ** i for i in range(size)]
    return tf.reduce_sum(digits * tf.constant(weights, tf.int64))


def declared_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
    """width x height as the file's header declares it (PNG, GIF, BMP, JPEG), else 0."""
    padded = tf.strings.join([tf.strings.substr(image_bytes, 0, _HEADER_BYTES),
                              tf.constant(b"\0" * _HEADER_BYTES)])
    header = tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8)

    def starts_with(signature: bytes) -> tf.Tensor:
        return tf.reduce_all(tf.equal(header[:len(signature)],
                                      tf.constant(list(signature), tf.uint8)))

    def bmp() -> tf.Tensor:
        width, height = _uint(header, 18, 4, False), _uint(header, 22, 4, False)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # top-down BMPs
        return width * height

    def jpeg() -> tf.Tensor:
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
        return shape[0] * shape[1]

    return tf.case([
        (starts_with(b"\x89PNG\r\n\x1a\n"),
         lambda: _uint(header, 16, 4, True) * _uint(header, 20, 4, True)),
        (starts_with(b"GIF8"), lambda: _uint(header, 6, 2, False) * _uint(header, 8, 2, False)),
        (starts_with(b"BM"), bmp),
        (starts_with(b"\xff\xd8"), jpeg),
    ], default=lambda: tf.constant(0, tf.int64), exclusive=True)


def decode_and_resize(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar string) -> float32 RGB [224, 224, 3] in 0..255.

    Grayscale, palette, RGBA and CMYK become RGB (alpha dropped); animated GIFs use their first
    frame. Undecodable bytes, and images declaring more than MAX_IMAGE_PIXELS, raise
    InvalidArgumentError, which TF Serving reports as a client error (HTTP 400).
    """
    pixels = declared_pixels(image_bytes)
    check = tf.debugging.assert_less_equal(
        pixels, tf.constant(MAX_IMAGE_PIXELS, tf.int64),
        message=f"image too large: more than {MAX_IMAGE_PIXELS} pixels declared")
    with tf.control_dependencies([check]):
        image_bytes = tf.identity(image_bytes)
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
