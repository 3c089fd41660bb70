"""What a model's base path must look like, and a hint when it does not.

TF Serving and `serving local` serve `<base path>/<version>/` where `version` is a number;
the puller fills such a folder. The two common mistakes are pointing at the folder above
(`models/` instead of `models/<name>/`) and at a version itself (`models/<name>/1/`). TF
Serving only says "Did you forget to name your leaf directory as a number (eg. '/1/')?".
"""

from __future__ import annotations

from pathlib import Path

from contract.names import SAVED_MODEL_FILE as SAVED_MODEL
from contract.names import parse_version


def _versions(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir()
                      if p.is_dir() and parse_version(p.name) is not None)
    except OSError:
        return []


def base_path_problem(path: Path, flag: str) -> str | None:
    """None when `path` holds numbered version folders; else what was found there and the
    likely fix, naming `flag` (say "--model-base-path")."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a folder of numbered version folders"
    if _versions(path):
        return None
    if (path / SAVED_MODEL).is_file():
        return (f"{path} is itself a version (it has {SAVED_MODEL}): point {flag} at its "
                f"parent, {path.parent}")
    holders = [p for p in sorted(path.iterdir()) if p.is_dir() and _versions(p)]
    if holders:
        return (f"found {holders[0].name}/ in {path}, which holds versions: did you mean "
                f"{flag} {holders[0]}?")
    found = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())[:8])
    return (f"{path} holds no numbered version folders (found: {found or 'nothing'}); each "
            f"version lives in a folder named by its number, e.g. {path / '1'}/")
