"""Reading a published version from the store, verified: what the puller installs and what
`trainer evaluate` scores are the same bytes, checked the same way.

A version exists for readers only once its `_MANIFEST.json` parses strictly and names the
model; every file it lists must be stored at its size (checked before a byte is downloaded)
and match its sha256 once downloaded. Its `identity.json`, when it has one, must say the same
model, version and classes; with a verify key the signature and the identity are checked
first (`fetch_head`), before any other file is downloaded, and the identity is required.
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
    check_identity,
    parse_manifest,
    sha256_file,
)
from contract.names import IDENTITY_FILE, SIGNATURE_FILE
from contract.storage import FileEntry, Location, run_parallel

log = logging.getLogger(__name__)
DOWNLOAD_WORKERS = 8
# What one version may hold before a byte of it is downloaded: today's VGG16 version is
# 0.55 GB; the serving volume (k8s sizeLimit 3Gi) holds two of them and one download.
MAX_VERSION_MIB = 1024


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


def check_sizes(manifest: Manifest, stored: dict[str, FileEntry],
                max_mib: int = MAX_VERSION_MIB) -> None:
    """Sizes first: a version bigger than `max_mib` in all, or an object that is not the
    size the manifest says, is refused before a byte of it is downloaded."""
    total = sum(f.size for f in manifest.files)
    if total > max_mib << 20:
        raise Rejected(f"its files add up to {total / (1 << 20):.0f} MiB, more than the "
                       f"{max_mib} MiB a version may have (--max-version-mib)")
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
        remote.download_file(f.path, target, progress, size=f.size)
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


def fetch_head(remote: Location, manifest: Manifest, folder: Path,
               verify_key=None) -> list[ManifestFile]:
    """The small files that say whether the rest is worth downloading, into `folder`:
    with `verify_key` the signature (this key's, signing exactly the listed files) and the
    identity it signs (required); without one, the identity if the version has one. Each
    must agree with the manifest. Returns the files still to fetch; Rejected says why not."""
    from contract.signing import SignatureError, signature_entry

    by_path = {f.path: f for f in manifest.files}
    head = []
    try:
        if verify_key is not None:
            sig = signature_entry(manifest.files)
            fetch_file(remote, sig, folder)
            verify_key.check_signed_files(folder / SIGNATURE_FILE,
                                          {f.path: f.sha256 for f in manifest.files})
            head.append(sig)
            if IDENTITY_FILE not in by_path:
                raise SignatureError(f"the signed files have no {IDENTITY_FILE}, so the "
                                     "signature does not say which model, version and "
                                     "classes it is for (sign it again with a current "
                                     "trainer)")
    except SignatureError as e:
        raise Rejected(f"signature: {e}") from None
    identity = by_path.get(IDENTITY_FILE)
    if identity is not None:
        if identity.size > MAX_MANIFEST_BYTES:
            raise Rejected(f"{IDENTITY_FILE} has {identity.size} bytes (at most "
                           f"{MAX_MANIFEST_BYTES})")
        fetch_file(remote, identity, folder)
        try:
            check_identity((folder / IDENTITY_FILE).read_bytes(), manifest)
        except ManifestError as e:
            raise Rejected(f"identity: {e}") from None
        head.append(identity)
    return [f for f in manifest.files if f not in head]


def verify_signed_folder(folder: Path, verify_key) -> None:
    """model-signing's full verification of a downloaded version folder, before it is used;
    Rejected says why not."""
    from contract.signing import SignatureError

    try:
        verify_key.verify_folder(folder)
    except SignatureError as e:
        raise Rejected(f"signature: {e}") from None


def download_version(models: Location, model_name: str, version: int, folder: Path,
                     verify_key=None) -> Manifest:
    """Every file of a published version into `folder`, each checked; with `verify_key`
    (contract.signing.VerifyKey) the folder's signature too. Rejected says what is wrong."""
    remote = models.child(str(version))
    stored = {e.path: e for e in remote.list_files()}
    if MANIFEST_FILE not in stored:
        raise Rejected(f"version {version} of {model_name} is not published (no "
                       f"{MANIFEST_FILE} under {remote.uri})")
    manifest = read_manifest(models, model_name, version)
    check_sizes(manifest, stored)
    rest = fetch_head(remote, manifest, folder, verify_key)
    run_parallel(lambda f: fetch_file(remote, f, folder), rest, DOWNLOAD_WORKERS)
    if verify_key is not None:
        verify_signed_folder(folder, verify_key)
    return manifest
