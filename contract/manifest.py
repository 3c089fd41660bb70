"""`_MANIFEST.json`: the record that makes a model version exist (DESIGN section 3).

The trainer writes it last, after every other file of the version; readers (the puller)
ignore a version without a valid one and verify every file it lists. This module is the one
place that knows its format: building it, and parsing it strictly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from contract.names import IDENTITY_FILE, MAX_VERSION, SAVED_MODEL_FILE

MANIFEST_FILE = "_MANIFEST.json"
FORMAT = 1
# A real manifest is a few kilobytes; anything far bigger is refused unread.
MAX_MANIFEST_BYTES = 1 << 20
_HASH_CHUNK = 4 * 1024 * 1024


class ManifestError(ValueError):
    """The manifest is missing fields, has wrong types, or lists unsafe paths."""


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    model_name: str
    version: int
    classes: list[str]
    files: list[ManifestFile]
    raw: dict


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def list_version_files(version_dir: Path) -> list[ManifestFile]:
    """Every file of a local version folder except the manifest, with size and sha256."""
    files = []
    for p in sorted(version_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST_FILE:
            files.append(ManifestFile(p.relative_to(version_dir).as_posix(), p.stat().st_size,
                                      sha256_file(p)))
    return files


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_manifest(*, model_name: str, version: int, classes: list[str], base_model: dict,
                   input_spec: dict, metrics: dict, dataset: dict,
                   files: list[ManifestFile]) -> dict:
    return {
        "format": FORMAT,
        "model_name": model_name,
        "version": version,
        "created": utc_now(),
        "classes": classes,
        "base_model": base_model,
        "input": input_spec,
        "metrics": metrics,
        "dataset": dataset,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
    }


def safe_relative_path(path: object) -> str:
    """A manifest path must stay inside its version folder."""
    if not isinstance(path, str) or not path:
        raise ManifestError(f"file path must be a non-empty string, got {path!r}")
    p = PurePosixPath(path)
    if p.is_absolute() or "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        raise ManifestError(f"file path {path!r} escapes the version folder")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):  # NUL and other control characters
        raise ManifestError(f"file path {path!r} has a control character")
    if path == MANIFEST_FILE:
        raise ManifestError("the manifest cannot list itself")
    return path


def _require(raw: dict, key: str, kind: type | tuple[type, ...]) -> object:
    if key not in raw:
        raise ManifestError(f"missing field {key!r}")
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


def parse_manifest(data: bytes, expected_version: int | None = None) -> Manifest:
    """Strictly parse a manifest; raises ManifestError with the reason when it is not valid."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"not valid JSON ({e})") from e
    except RecursionError as e:  # hostile nesting
        raise ManifestError("nested too deeply") from e
    if not isinstance(raw, dict):
        raise ManifestError("top level is not a JSON object")
    fmt = _require(raw, "format", int)
    if fmt != FORMAT:
        raise ManifestError(f"unknown manifest format {fmt} (this reader knows {FORMAT})")
    model_name = _require(raw, "model_name", str)
    version = _require(raw, "version", int)
    if not 0 < version <= MAX_VERSION:
        raise ManifestError(f"version must be a positive integer below 2**63, got {version}")
    if expected_version is not None and version != expected_version:
        raise ManifestError(f"manifest says version {version} but lies in folder "
                            f"{expected_version}")
    classes = _require(raw, "classes", list)
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise ManifestError("field 'classes' must be a non-empty list of names")
    entries = _require(raw, "files", list)
    if not entries:
        raise ManifestError("field 'files' is empty")
    files, seen = [], set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise ManifestError("every entry of 'files' must be an object")
        path = safe_relative_path(entry.get("path"))
        size, digest = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"file {path!r}: size must be a non-negative integer")
        if not isinstance(digest, str) or len(digest) != 64 or \
                any(c not in "0123456789abcdef" for c in digest):
            raise ManifestError(f"file {path!r}: sha256 must be 64 lowercase hex digits")
        if path in seen:
            raise ManifestError(f"file {path!r} is listed twice")
        seen.add(path)
        files.append(ManifestFile(path, size, digest))
    for path in seen:  # "a" and "a/b" cannot both be files
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        while parent:
            if parent in seen:
                raise ManifestError(f"{parent!r} is listed as a file and as a folder")
            parent = parent.rsplit("/", 1)[0] if "/" in parent else None
    if SAVED_MODEL_FILE not in seen:
        raise ManifestError(f"the file list has no {SAVED_MODEL_FILE}")
    return Manifest(model_name, version, list(classes), files, raw)


def identity_bytes(model_name: str, version: int, classes: list[str]) -> bytes:
    """`identity.json`: what a version is. The trainer writes it into the version folder
    before signing, so a signature binds the model name, the version number and the class
    order, which the unsigned manifest only states."""
    return (json.dumps({"format": FORMAT, "model_name": model_name, "version": version,
                        "classes": classes}, indent=2) + "\n").encode()


def check_identity(data: bytes, manifest: Manifest) -> None:
    """The version's `identity.json` must name the model and version the manifest was
    found as (`read_manifest` checked those against the store path) and the manifest's
    classes in the same order; ManifestError says what differs."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ManifestError(f"{IDENTITY_FILE} is not valid JSON ({type(e).__name__})") from e
    if not isinstance(raw, dict):
        raise ManifestError(f"{IDENTITY_FILE}: top level is not a JSON object")
    name, version = raw.get("model_name"), raw.get("version")
    if (name, version) != (manifest.model_name, manifest.version):
        raise ManifestError(f"{IDENTITY_FILE} says version {version!r} of model {name!r}, "
                            f"but it was found as version {manifest.version} of "
                            f"{manifest.model_name!r} (a copy made without the signing key)")
    if raw.get("classes") != manifest.classes:
        raise ManifestError(f"the manifest's classes {manifest.classes} differ from "
                            f"{raw.get('classes')!r} in {IDENTITY_FILE}")
