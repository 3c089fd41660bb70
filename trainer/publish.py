"""Publishing a finished version folder to `<models_uri>/<model_name>/<version>/`.

Every file is uploaded first and `_MANIFEST.json` last, so a version either exists
completely for readers or not at all. A published version is never overwritten. On a local
output the folder is assembled under a hidden temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tqdm import tqdm

from contract.errors import InputError, UserError
from contract.manifest import MANIFEST_FILE, ManifestFile
from contract.names import STAGING_PREFIX
from contract.storage import ByteProgress, LocalLocation, Location, open_location, run_parallel

log = logging.getLogger(__name__)


def already_published(model_name: str, version: int, where: str) -> InputError:
    return InputError(f"version {version} of model {model_name!r} already exists at {where}; "
                      "published versions are never overwritten (choose another --version)")


def publish(version_dir: Path, files: list[ManifestFile], manifest: dict, output_uri: str,
            model_name: str, version: int, quiet: bool = False) -> str:
    """Upload `files` of `version_dir`, then the manifest. Returns the version's URI."""
    models = open_location(output_uri).child(model_name)
    (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    if isinstance(models, LocalLocation):
        return _publish_local(version_dir, models, model_name, version)
    return _publish_remote(version_dir, files, models, model_name, version, quiet)


def _publish_local(version_dir: Path, models: LocalLocation, model_name: str,
                   version: int) -> str:
    final = models.root / str(version)
    if final.exists():
        raise already_published(model_name, version, str(final))
    models.root.mkdir(parents=True, exist_ok=True)
    # A non-numeric hidden name: TF Serving and the puller ignore it until the rename.
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=models.root))
    try:
        assembled = staging / "version"
        try:
            os.rename(version_dir, assembled)  # same filesystem: no 0.5 GB copy
        except OSError:
            shutil.copytree(version_dir, assembled)
        try:
            os.rename(assembled, final)  # atomic; fails if `final` appeared meanwhile
        except OSError as e:
            raise already_published(model_name, version, str(final)) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(final)


def _publish_remote(version_dir: Path, files: list[ManifestFile], models: Location,
                    model_name: str, version: int, quiet: bool) -> str:
    target = models.child(str(version))
    existing = [e.path for e in target.list_files()]
    if MANIFEST_FILE in existing:
        raise already_published(model_name, version, target.uri)
    if existing:
        # No manifest: an earlier upload died half-way. Readers never saw it; clear it.
        log.warning("removing %d files of an incomplete earlier upload at %s",
                    len(existing), target.uri)
        target.delete(existing)

    total = sum(f.size for f in files)
    log.info("uploading version %d to %s: %d files, %.1f MB", version, target.uri, len(files),
             total / 1e6)
    bar = tqdm(total=total, desc=f"uploading version {version}", unit="B", unit_scale=True,
               unit_divisor=1024, disable=quiet)
    try:
        with bar:
            progress = ByteProgress(bar)
            run_parallel(lambda f: target.upload_file(f.path, version_dir / f.path, progress),
                         sorted(files, key=lambda f: -f.size))  # largest first
        race = target.exists(MANIFEST_FILE)
        if not race:
            target.write_bytes(MANIFEST_FILE, (version_dir / MANIFEST_FILE).read_bytes())
    except (UserError, KeyboardInterrupt, SystemExit):
        # Best effort: remove what we uploaded. No manifest was written, so even if this
        # fails (the store is down) no reader will ever see the partial version.
        try:
            target.delete([f.path for f in files])
        except (UserError, OSError) as e:
            log.warning("could not remove the partial upload of version %d (%s); it has no "
                        "manifest, so no reader will use it, and the next run of this "
                        "version clears it", version, e)
        raise
    if race:  # another run published this version while we uploaded: its files are now ours
        raise already_published(model_name, version, target.uri)
    return target.uri
