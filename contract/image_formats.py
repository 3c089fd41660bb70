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
# Its frames are found by walking its blocks; one that needs more steps than this (about
# 5 MB of the 255-byte blocks every encoder writes) is refused as corrupt.
MAX_GIF_BLOCKS = 20_000


def sniff(data: bytes) -> str | None:
    """The format `data` starts like, or None."""
    return next((fmt for fmt, sig in SIGNATURES.items() if data.startswith(sig)), None)


def gif_frame_pixels(data: bytes) -> int:
    """Sum of width x height over a GIF's frames, from their image descriptors (not the
    header's logical screen). Raises ValueError past MAX_GIF_BLOCKS steps. Stops at the
    trailer or where the data ends (what is there is counted; decoding judges the rest).
    trainer.preprocessing.gif_frame_pixels is the same walk in TensorFlow ops."""
    def byte(i: int) -> int:
        return data[min(i, len(data) - 1)] if data else 0

    def table(flags: int) -> int:  # a colour table's size in bytes, when flagged present
        return 3 * (2 << (flags % 8)) if flags >= 128 else 0

    pos, in_blocks, total = 13 + table(byte(10)), False, 0
    for _ in range(MAX_GIF_BLOCKS):
        if pos >= len(data):
            return total
        b = byte(pos)
        if in_blocks:  # data sub-blocks: a length byte, that many bytes; 0 ends them
            pos, in_blocks = (pos + 1, False) if b == 0 else (pos + b + 1, True)
        elif b == 0x2C:  # image descriptor: x, y, width, height, flags; colour table; LZW
            total += (byte(pos + 5) + 256 * byte(pos + 6)) * (byte(pos + 7) + 256 * byte(pos + 8))
            pos, in_blocks = pos + 10 + table(byte(pos + 9)) + 1, True
        elif b == 0x21:  # extension: introducer, label, then sub-blocks
            pos, in_blocks = pos + 2, True
        else:  # the trailer (0x3B), or bytes that are no GIF block
            return total
    raise ValueError(f"more than {MAX_GIF_BLOCKS} GIF blocks")
