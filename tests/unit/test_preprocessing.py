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
    bomb = _png_bomb(12_000)  # 144 MP declared
    assert len(bomb) < 100_000
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        decode_and_resize(tf.constant(bomb))
    decode_and_resize(tf.constant(_png_bomb(2_000)))  # 4 MP: fine


# -- GIFs: the size is in the frames, not the header -------------------------------------

def gif_parts(side: int) -> tuple[bytes, bytes]:
    """(header up to its first block, one frame's blocks) of a one-colour GIF of side x side."""
    from contract.image_formats import gif_frame_pixels

    data = encode(Image.new("P", (side, side), 0), "GIF")
    assert gif_frame_pixels(data) == side * side
    start = 13 + (3 * (2 << (data[10] % 8)) if data[10] >= 128 else 0)
    assert data[-1:] == b";"  # the trailer
    return data[:start], data[start:-1]


def hostile_gif(side: int, frames: int, screen: int = 1) -> bytes:
    """A GIF whose logical screen says screen x screen, holding `frames` side x side frames."""
    header, frame = gif_parts(side)
    header = header[:6] + screen.to_bytes(2, "little") * 2 + header[10:]
    return header + frame * frames + b";"


GIF_HEADER = b"GIF89a\x01\x00\x01\x00\x00\x00\x00"
# One comment whose text is 25,000 one-byte sub-blocks: one block, walked at once.
LONG_CHAIN = GIF_HEADER + b"\x21\xfe" + b"\x01A" * 25_000 + b"\x00;"
# 1,100 comments (5.5 KB): each a block of its own; this walk cost 0.5 s a file.
MANY_BLOCKS = GIF_HEADER + b"\x21\xfe\x01A\x00" * 1_100 + b";"


@pytest.mark.parametrize("data,expected", [
    (encode(RED.convert("P"), "GIF"), 300 * 200),
    (hostile_gif(3000, 1), 9_000_000),  # header 1x1, one 3000x3000 frame
    (hostile_gif(3000, 12), 108_000_000),  # twelve of them: over the limit together
    (hostile_gif(500, 3)[:-200], 750_000),  # truncated in its last frame: what is there
    (b"GIF89a", 0),
    (LONG_CHAIN, 0),
    (hostile_gif(20, 500), 200_000),  # 500 frames, 1,000 blocks: a long animation is fine
    (MANY_BLOCKS, None),  # more than 1,024 blocks: refused after 1,024 loop steps
], ids=["plain", "big-frame-small-header", "many-frames", "truncated", "header-only",
        "long-chain", "500-frames", "too-many-blocks"])
def test_gif_frames_are_counted_the_same_way_with_and_without_tensorflow(data, expected):
    from contract.image_formats import gif_frame_pixels as python_walk
    from trainer.preprocessing import gif_frame_pixels

    graph_walk = tf.function(gif_frame_pixels)  # as in the exported graph (eager is slow)

    if expected is None:
        with pytest.raises(ValueError, match="more than 1024 GIF blocks"):
            python_walk(data)
        with pytest.raises(tf.errors.InvalidArgumentError, match="GIF blocks"):
            graph_walk(tf.constant(data))
        return
    assert python_walk(data) == expected
    assert int(graph_walk(tf.constant(data))) == expected


def peak_kb() -> int:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss, which Linux
    carries across execve: a child of the test process would start at the test's peak."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


def preprocess_in_a_child(prelude: str, batch: str) -> tuple[list, list, int]:
    """(positions, errors, MB the process's peak grew by) of preprocess_batch on `batch` (a
    Python expression, after `prelude`), in a fresh process warmed up first, so its peak
    is this call's alone."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    code = f"""
import json, sys
import tensorflow as tf
sys.path.insert(0, {str(REPO)!r})
from tests.unit.test_preprocessing import MANY_BLOCKS, RED, encode, hostile_gif, peak_kb
from trainer.preprocessing import preprocess_batch
{prelude}
preprocess_batch(tf.constant([encode(RED, "PNG")]))  # traced and warm before measuring
before = peak_kb()
images, positions, errors = preprocess_batch(tf.constant({batch}))
after = peak_kb()
print(json.dumps([positions.numpy().tolist(), [e.decode() for e in errors.numpy()],
                  (after - before) // 1024]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hostile_gifs_are_flagged_per_item_and_never_decoded():
    """In the graph every request runs: the crafted GIFs get their reason, the good image
    its pixels; the process never holds what the frames would have decoded to."""
    positions, errors, grown_mb = preprocess_in_a_child("", (
        '[hostile_gif(6000, 3), hostile_gif(3000, 12), MANY_BLOCKS, encode(RED, "JPEG")]'))
    assert positions == [3]
    assert errors == ["image too large (108 megapixels)", "image too large (108 megapixels)",
                      "truncated or corrupt image", ""]
    # Decoding them would take 108 MP x 3 bytes (324 MB) for the output alone.
    assert grown_mb < 100, grown_mb


def test_one_calls_decoding_stays_within_its_memory_budget(tmp_path):
    """Issue 27: four progressive 100 MP JPEGs (1.2 MB each, under the 100 MP guard) took
    +1.2 GB to decode four at a time, beside three 0.55 GB versions in a 4 GiB pod. Images
    over 25 MP are now decoded one at a time: measured +0.6 GB."""
    side = 9999  # 99.98 MP: just within MAX_IMAGE_PIXELS
    big = Image.new("RGB", (side, side), (120, 30, 200))
    big.paste(Image.new("RGB", (64, 64), (0, 250, 0)), (0, 0))
    path = tmp_path / "big.jpg"
    big.save(path, "JPEG", progressive=True, quality=90)
    del big
    positions, errors, grown_mb = preprocess_in_a_child(
        f"big = open({str(path)!r}, 'rb').read()", '[big] * 4 + [encode(RED, "JPEG")]')
    assert positions == [0, 1, 2, 3, 4] and errors == [""] * 5  # all decoded, in order
    # The serving pod's 4 GiB holds three versions (1.65 GB), TensorFlow and a batch's
    # activations: one call's decoding gets less than 1 GB.
    assert grown_mb < 900, grown_mb
