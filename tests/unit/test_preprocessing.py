"""The one preprocessing function: any supported image becomes a VGG16 input tensor."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainer.preprocessing import decode_and_resize, preprocess_image_bytes


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


RED = Image.new("RGB", (300, 200), (220, 10, 10))


@pytest.mark.parametrize("data", [
    encode(RED, "JPEG", quality=95),
    encode(RED, "PNG"),
    encode(RED.convert("RGBA"), "PNG"),
    encode(RED.convert("P"), "PNG"),
    encode(RED.convert("P"), "GIF"),
    encode(RED, "BMP"),
    encode(RED.convert("CMYK"), "JPEG", quality=95),
], ids=["jpeg", "png", "rgba", "palette-png", "gif", "bmp", "cmyk-jpeg"])
def test_colour_formats_become_the_same_rgb(data):
    pixels = decode_and_resize(tf.constant(data)).numpy()
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels.mean(axis=(0, 1)), [220, 10, 10], atol=6)


def test_grayscale_is_replicated_to_three_channels():
    pixels = decode_and_resize(tf.constant(encode(Image.new("L", (50, 60), 77), "PNG"))).numpy()
    np.testing.assert_allclose(pixels, 77, atol=0.01)


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    pixels = decode_and_resize(tf.constant(buf.getvalue())).numpy()
    assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 30


def test_vgg_preprocessing_is_keras_preprocess_input():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(
        0, 255, (224, 224, 3), dtype=np.uint8)), "PNG")
    ours = preprocess_image_bytes(tf.constant(data)).numpy()
    pixels = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32)
    expected = keras.applications.vgg16.preprocess_input(pixels[None].copy())[0]
    np.testing.assert_allclose(ours, expected, atol=1e-3)  # 224 px in: resize is identity


def test_undecodable_bytes_raise_invalid_argument():
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_and_resize(tf.constant(b"\x89PNG but not really"))


def _png_bomb(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")  # a few KB that decode to side^2 pixels
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "JPEG"])
def test_declared_pixels_reads_each_format_header(fmt):
    from trainer.preprocessing import declared_pixels

    data = encode(Image.new("RGB", (123, 45)), fmt)
    assert int(declared_pixels(tf.constant(data))) == 123 * 45
    assert int(declared_pixels(tf.constant(b"plain text"))) == 0


def test_decompression_bombs_are_refused_before_decoding():
    from trainer.data import MAX_IMAGE_PIXELS as TRAINER_LIMIT
    from trainer.preprocessing import MAX_IMAGE_PIXELS

    assert MAX_IMAGE_PIXELS == TRAINER_LIMIT
    bomb = _png_bomb(12_000)  # 144 MP declared
    assert len(bomb) < 100_000
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        decode_and_resize(tf.constant(bomb))
    decode_and_resize(tf.constant(_png_bomb(2_000)))  # 4 MP: fine
