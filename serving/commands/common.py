"""What several `serving` commands share."""

from __future__ import annotations


def verify_key_of(path: str | None):
    """The loaded --verify-key, or None; a bad key file fails here, before any download."""
    if path is None:
        return None
    from contract.signing import VerifyKey

    return VerifyKey.load(path)
