"""The one image preprocessing function, used by training AND inside the exported graph.

Training and serving must never disagree on preprocessing, so this module is the only place
that decodes, converts, resizes or normalises an image. Change anything here and bump
PREPROCESSING_VERSION: it is part of every feature-cache key and of the manifest.
"""

import functools

import keras
import tensorflow as tf

# Per-item reasons in the `error` output of serving_default (DESIGN section 4): a bad image
# never fails the run it shares with other clients' images.
from contract.image_formats import (
    ERROR_CORRUPT,
    ERROR_NOT_AN_IMAGE,
    ERROR_TOO_LARGE,
    MAX_GIF_BLOCKS,
    MAX_IMAGE_PIXELS,
    SIGNATURES,
)

IMAGE_SIZE = (224, 224)  # VGG16 with its fully connected top takes exactly 224x224
PREPROCESSING = "vgg16"  # manifest "input.preprocessing"
PREPROCESSING_VERSION = "vgg16-bilinear-aa-v1"
_HEADER_BYTES = 32
# Images decoded at once per call, and the size above which an image is decoded alone:
# one call's decoding then holds at most about 4 x 25 MP (or 1 x 100 MP) of pixel buffers,
# 0.3-0.45 GB at 3-4.5 bytes a pixel (RGB output, a progressive JPEG's coefficients),
# instead of 4 x 100 MP.
DECODE_PARALLELISM = 4
BIG_IMAGE_PIXELS = 25_000_000


def _uint(header: tf.Tensor, start: int, size: int, big_endian: bool) -> tf.Tensor:
    digits = tf.cast(header[start:start + size], tf.int64)
    weights = [256 ** (size - 1 - i) if big_endian else 256 ** i for i in range(size)]
    return tf.reduce_sum(digits * tf.constant(weights, tf.int64))


def _header(image_bytes: tf.Tensor) -> tf.Tensor:
    """The first _HEADER_BYTES bytes as uint8, zero-padded."""
    padded = tf.strings.join([tf.strings.substr(image_bytes, 0, _HEADER_BYTES),
                              tf.constant(b"\0" * _HEADER_BYTES)])
    return tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8)


def is_known_format(image_bytes: tf.Tensor) -> tf.Tensor:
    """True when the bytes start like a JPEG, PNG, GIF or BMP file (the contract's formats)."""
    header = _header(image_bytes)
    return tf.reduce_any([
        tf.reduce_all(tf.equal(header[:len(sig)], tf.constant(list(sig), tf.uint8)))
        for sig in SIGNATURES.values()])


def gif_frame_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
    """Sum of width x height over a GIF's frames, from their image descriptors: the walk of
    contract.image_formats.gif_frame_pixels in TensorFlow ops (tests hold them equal). Fails
    (InvalidArgumentError) past MAX_GIF_BLOCKS blocks.

    A loop step in a graph costs ~25 us, so the loop runs once per block, never once per
    data sub-block: where each chain of sub-blocks ends is found for every byte at once
    (pointer doubling: ceil(log2(n)) vectorised gathers)."""
    data = tf.cast(tf.io.decode_raw(image_bytes, tf.uint8), tf.int32)
    n = tf.size(data)

    def byte(i: tf.Tensor) -> tf.Tensor:
        return tf.gather(data, tf.clip_by_value(i, 0, n - 1))

    def table(flags: tf.Tensor) -> tf.Tensor:
        return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2, flags % 8), 0)

    # ends[p]: where the sub-block chain starting at byte p ends (its 0 length byte), or n
    # when it runs past the data. Each round doubles how far every pointer has jumped.
    at = tf.range(n)
    ends = tf.concat([tf.where(tf.equal(data, 0), at, tf.minimum(at + data + 1, n)), [n]], 0)
    # Until no pointer moves: as many rounds as log2 of the longest chain (about 9 for a
    # photo's 300 x 300 frames), never more than log2(n) + 1.
    def jump(moved, e):
        further = tf.gather(e, e)
        return tf.reduce_any(tf.not_equal(further, e)), further

    _, ends = tf.while_loop(lambda moved, e: moved, jump, (tf.constant(True), ends))

    def step(pos, total, done, blocks):
        b = byte(pos)
        at_end = pos >= n
        image = tf.equal(b, 0x2C) & tf.logical_not(at_end)
        done = at_end | tf.logical_not(image | tf.equal(b, 0x21))
        size = tf.cast(byte(pos + 5) + 256 * byte(pos + 6), tf.int64) * \
            tf.cast(byte(pos + 7) + 256 * byte(pos + 8), tf.int64)
        total = tf.where(image, total + size, total)
        chain = tf.where(image, pos + 10 + table(byte(pos + 9)) + 1, pos + 2)
        pos = tf.gather(ends, tf.minimum(chain, n)) + 1
        return pos, total, done, blocks + 1

    _, total, done, _ = tf.while_loop(
        lambda pos, total, done, blocks: tf.logical_not(done) & (blocks < MAX_GIF_BLOCKS),
        step, (13 + table(byte(10)), tf.constant(0, tf.int64), tf.constant(False),
               tf.constant(0)))
    check = tf.debugging.Assert(done, [f"more than {MAX_GIF_BLOCKS} GIF blocks"])
    with tf.control_dependencies([check]):
        return tf.identity(total)


def declared_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
    """width x height as the file declares it (PNG, BMP and JPEG headers; a GIF's frames
    together), else 0."""
    header = _header(image_bytes)

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
        (starts_with(b"GIF8"), lambda: gif_frame_pixels(image_bytes)),
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
    return _decode_and_resize_unchecked(image_bytes)


def _decode_and_resize_unchecked(image_bytes: tf.Tensor) -> tf.Tensor:
    """decode_and_resize once the declared size is known to be within bounds."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    # Antialiasing keeps large photos from aliasing when shrunk to 224 px.
    image = tf.image.resize(image, IMAGE_SIZE, method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def vgg_preprocess(pixels: tf.Tensor) -> tf.Tensor:
    """RGB pixels in 0..255 (any leading dims) -> VGG16 input (BGR, ImageNet mean removed)."""
    return keras.applications.vgg16.preprocess_input(tf.cast(pixels, tf.float32))


def as_graph_code(fn):
    """`fn` for tf.data's map, traced as written. The image code here has no Python control
    flow over tensors (tf.cond, tf.case, tf.while_loop are explicit), so AutoGraph's source
    rewrite, which tf.data applies to a map function called eagerly, is pure cost: 1.5 s of
    a small training run's 12."""
    return tf.autograph.experimental.do_not_convert(fn)


@functools.cache
def traced_once(fn):
    """`fn` of one encoded image (a scalar string), traced once per process. Each tf.data
    pipeline that maps the image code calls this graph instead of tracing the code again
    (0.2 s a pipeline, and a run builds several)."""
    return tf.function(fn, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


def preprocess_image_bytes(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes -> VGG16 input tensor [224, 224, 3]. THE preprocessing function."""
    return vgg_preprocess(decode_and_resize(image_bytes))


def _dropping_pass(fn, positions: tf.Tensor, image_bytes: tf.Tensor, parallelism: int,
                   sentinel: tuple) -> tuple:
    """(positions, *fn(bytes)) of the images at `positions` for which fn did not fail, in
    order: `fn` runs where a failure drops only that image.

    tf.data's ignore_errors is the one way a graph survives a failing op: a corrupt image
    is dropped here instead of failing the whole run. The items are gathered with one
    batch and get_single_element, which costs what a map_fn costs (a few ms); a `reduce`
    over the same dataset cost 100-300 ms per call, whatever the images. A last item that
    cannot fail (`sentinel`, fn's outputs for nothing) keeps the dataset from ever being
    empty (get_single_element would fail).
    """
    items = tf.data.Dataset.from_tensor_slices((positions, tf.gather(image_bytes, positions)))
    items = items.map(lambda i, b: (i, *fn(b)), num_parallel_calls=parallelism,
                      deterministic=True)
    end = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), *sentinel))
    found = items.ignore_errors(log_warning=False).concatenate(end).batch(
        tf.size(positions, out_type=tf.int64) + 1).get_single_element()
    return tuple(t[:-1] for t in found)


def _preprocessed(image_bytes: tf.Tensor) -> tuple[tf.Tensor]:
    return (vgg_preprocess(_decode_and_resize_unchecked(image_bytes)),)


def _decoded(positions: tf.Tensor, image_bytes: tf.Tensor, pixels: tf.Tensor
             ) -> tuple[tf.Tensor, tf.Tensor]:
    """(positions, VGG16 inputs) of the images at `positions` that decode, in order; those
    declaring more than BIG_IMAGE_PIXELS one at a time, the others DECODE_PARALLELISM at
    a time, so one call's decoding holds at most about DECODE_PARALLELISM x BIG_IMAGE_PIXELS
    pixels' worth of buffers, whatever the request holds."""
    zeros = (tf.zeros([*IMAGE_SIZE, 3], tf.float32),)
    big = pixels > BIG_IMAGE_PIXELS
    small_at, small = _dropping_pass(_preprocessed, tf.boolean_mask(positions, ~big),
                                        image_bytes, DECODE_PARALLELISM, zeros)
    big_at, large = _dropping_pass(_preprocessed, tf.boolean_mask(positions, big),
                                      image_bytes, 1, zeros)
    at = tf.concat([small_at, big_at], 0)
    order = tf.argsort(at)
    return tf.gather(at, order), tf.gather(tf.concat([small, large], 0), order)


def preprocess_batch(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """[N] encoded images -> (VGG16 inputs of the good ones [G, 224, 224, 3], their
    positions [G], and the per-item error [N]: "" or a short reason).

    Nothing in the bytes can make this fail. Under TF Serving's batching one failed
    Session::Run fails every request batched into it (batching/batching_session.cc,
    ProcessBatch), so a bad image must not fail the run. Each image's size is read (a GIF's
    blocks walked) in a pass where a failure drops only that image, then the images within
    MAX_IMAGE_PIXELS are decoded, resized and preprocessed, once each, in passes of the same
    kind (_decoded bounds their memory); the good images keep their order and go on alone,
    so their results are exactly what they would be without the bad ones.
    """
    n = tf.shape(image_bytes, out_type=tf.int64)[0]
    known = tf.map_fn(is_known_format, image_bytes, fn_output_signature=tf.bool)
    read, pixels = _dropping_pass(lambda b: (declared_pixels(b),), tf.where(known)[:, 0],
                                  image_bytes, DECODE_PARALLELISM,
                                  (tf.constant(0, tf.int64),))
    fits = pixels <= MAX_IMAGE_PIXELS
    positions, images = _decoded(tf.boolean_mask(read, fits), image_bytes,
                                 tf.boolean_mask(pixels, fits))

    def mark(at: tf.Tensor) -> tf.Tensor:
        return tf.scatter_nd(at[:, None], tf.ones_like(at, tf.bool), [n])

    prefix, suffix = ERROR_TOO_LARGE.split("{}")
    large_at = tf.boolean_mask(read, tf.logical_not(fits))
    large_text = tf.strings.join([prefix, tf.strings.as_string(
        tf.boolean_mask(pixels, tf.logical_not(fits)) // 1_000_000), suffix])
    errors = tf.where(mark(positions), "", ERROR_CORRUPT)
    errors = tf.tensor_scatter_nd_update(errors, large_at[:, None], large_text)
    errors = tf.where(known, errors, ERROR_NOT_AN_IMAGE)
    return images, positions, errors
