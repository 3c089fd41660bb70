"""The image formats of the contract (DESIGN section 4), recognised by their first bytes.

TensorFlow-free, so the client can check a file before sending it; the exported graph applies
the same rule (trainer.preprocessing). The reasons are what serving_default's `error` output
and `serving classify` say about a bad image.
"""

from __future__ import annotations

SIGNATURES = {  # format: the bytes every file of it starts with
    "jpeg": b"\xff\xd8\xff",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF8",
    "bmp": b"BM",
}
ERROR_NOT_AN_IMAGE = "not a JPEG/PNG/GIF/BMP image"
ERROR_CORRUPT = "truncated or corrupt image"
ERROR_TOO_LARGE = "image too large ({} megapixels)"  # str.format and tf.strings.format alike
# Largest image accepted (width x height; for a GIF, all its frames together): a 100 MP photo
# decodes to 300 MB. Bigger sizes are refused before decoding, so a few-KB "decompression
# bomb" cannot exhaust memory.
MAX_IMAGE_PIXELS = 100_000_000
# A GIF's size is not in its header: the logical screen may say 1x1 while a frame says
# 3000x3000, and TensorFlow's decoder (giflib) holds every frame while it decodes the first.
# Its frames are found by walking its blocks (extensions and image descriptors, each with
# its chain of data sub-blocks). A GIF with more blocks than this (about 500 animation
# frames: each has a control extension and a descriptor) is refused as corrupt: a 3 KB file
# of empty comment blocks then costs a few milliseconds to refuse, not a second to walk.
MAX_GIF_BLOCKS = 1024


def sniff(data: bytes) -> str | None:
    """The format `data` starts like, or None."""
    return next((fmt for fmt, sig in SIGNATURES.items() if data.startswith(sig)), None)


def gif_frame_pixels(data: bytes) -> int:
    """Sum of width x height over a GIF's frames, from their image descriptors (not the
    header's logical screen). Raises ValueError past MAX_GIF_BLOCKS blocks. Stops at the
    trailer or where the data ends (what is there is counted; decoding judges the rest).
    trainer.preprocessing.gif_frame_pixels is the same walk in TensorFlow ops."""
    def byte(i: int) -> int:
        return data[min(i, len(data) - 1)] if data else 0

    def table(flags: int) -> int:  # a colour table's size in bytes, when flagged present
        return 3 * (2 << (flags % 8)) if flags >= 128 else 0

    pos, total = 13 + table(byte(10)), 0
    for _ in range(MAX_GIF_BLOCKS):
        if pos >= len(data):
            return total
        b = data[pos]
        if b == 0x2C:  # image descriptor: x, y, width, height, flags; colour table; LZW
            total += (byte(pos + 5) + 256 * byte(pos + 6)) * (byte(pos + 7) + 256 * byte(pos + 8))
            pos += 10 + table(byte(pos + 9)) + 1
        elif b == 0x21:  # extension: introducer, label, then sub-blocks
            pos += 2
        else:  # the trailer (0x3B), or bytes that are no GIF block
            return total
        while pos < len(data) and data[pos]:  # data sub-blocks: a length byte, that many
            pos += data[pos] + 1              # bytes; a 0 ends them
        pos += 1
    raise ValueError(f"more than {MAX_GIF_BLOCKS} GIF blocks")
