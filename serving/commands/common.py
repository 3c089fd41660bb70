"""What several `serving` commands share."""

from __future__ import annotations

import sys

import click


def fail_line(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def verify_key_of(path: str | None):
    """The loaded --verify-key, or None; a bad key file fails here, before any download."""
    if path is None:
        return None
    from contract.signing import VerifyKey

    return VerifyKey.load(path)
