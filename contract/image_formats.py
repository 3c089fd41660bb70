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


def sniff(data: bytes) -> str | None:
    """The format `data` starts like, or None."""
    return next((fmt for fmt, sig in SIGNATURES.items() if data.startswith(sig)), None)
