"""Reading a published version from the store, verified: what the puller installs and what
`trainer evaluate` scores are the same bytes, checked the same way.

A version exists for readers only once its `_MANIFEST.json` parses strictly and names the
model; every file it lists must be stored at its size (checked before a byte is downloaded)
and match its sha256 once downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from contract.errors import StorageError, UserError
from contract.manifest import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    ManifestFile,
    parse_manifest,
    sha256_file,
)
from contract.storage import FileEntry, Location, run_parallel

log = logging.getLogger(__name__)
DOWNLOAD_WORKERS = 8


class Rejected(Exception):
    """A version that failed verification: discarded now, retried on a later sync."""


def read_manifest(source: Location, model_name: str, version: int) -> Manifest:
    """Version `version`'s manifest under the model folder `source`, parsed strictly and
    naming `model_name`; Rejected says what is wrong."""
    data = source.child(str(version)).read_bytes(MANIFEST_FILE, limit=MAX_MANIFEST_BYTES)
    try:
        manifest = parse_manifest(data, expected_version=version)
    except ManifestError as e:
        raise Rejected(f"invalid manifest: {e}") from e
    if manifest.model_name != model_name:
        raise Rejected(f"manifest is for model {manifest.model_name!r}, expected "
                       f"{model_name!r}")
    return manifest


def check_sizes(manifest: Manifest, stored: dict[str, FileEntry]) -> None:
    """Sizes first: an object that is not the size the manifest says is refused before a
    byte of it is downloaded."""
    for f in manifest.files:
        if f.path not in stored:
            raise Rejected(f"{f.path} is missing")
        if stored[f.path].size != f.size:
            raise Rejected(f"{f.path} has {stored[f.path].size} bytes, the manifest says "
                           f"{f.size}")


def fetch_file(remote: Location, f: ManifestFile, folder: Path, progress=None) -> None:
    """One listed file into `folder`, checked against its size and sha256."""
    target = (folder / f.path).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise Rejected(f"{f.path} escapes the version folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        remote.download_file(f.path, target, progress)
    except UserError as e:
        if isinstance(e, StorageError):
            raise
        raise Rejected(f"{f.path}: {e}") from e  # deleted while we downloaded, say
    except FileNotFoundError as e:
        raise Rejected(f"{f.path} is missing") from e
    size = target.stat().st_size
    if size != f.size:
        raise Rejected(f"{f.path} has {size} bytes, the manifest says {f.size}")
    if sha256_file(target) != f.sha256:
        raise Rejected(f"{f.path} does not match its sha256 in the manifest")


def download_version(models: Location, model_name: str, version: int, folder: Path,
                     verify_key=None) -> Manifest:
    """Every file of a published version into `folder`, each checked; with `verify_key`
    (contract.signing.VerifyKey) the folder's signature too. Rejected says what is wrong."""
    from contract.signing import SignatureError

    remote = models.child(str(version))
    stored = {e.path: e for e in remote.list_files()}
    if MANIFEST_FILE not in stored:
        raise Rejected(f"version {version} of {model_name} is not published (no "
                       f"{MANIFEST_FILE} under {remote.uri})")
    manifest = read_manifest(models, model_name, version)
    check_sizes(manifest, stored)
    run_parallel(lambda f: fetch_file(remote, f, folder), manifest.files, DOWNLOAD_WORKERS)
    if verify_key is not None:
        try:
            verify_key.verify_folder(folder)
        except SignatureError as e:
            raise Rejected(f"signature: {e}") from None
    return manifest
