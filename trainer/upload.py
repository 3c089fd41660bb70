"""`trainer upload`: a local folder of images into a dataset location (s3:// or a folder).

For the compose stack and any S3-compatible store, without an S3 command-line tool: the
same storage code as training (credentials and endpoint from the standard AWS environment),
parallel uploads with a byte progress bar, and files already there with the same size are
skipped, so an interrupted upload is finished by running it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from contract.errors import InputError
from contract.storage import ByteProgress, LocalLocation, open_location, run_parallel


@dataclass(frozen=True)
class UploadResult:
    uploaded: int
    skipped: int
    bytes: int


def upload_folder(data: str, to: str, quiet: bool = False) -> UploadResult:
    source = open_location(data)
    if not isinstance(source, LocalLocation) or not source.root.is_dir():
        raise InputError(f"--data {data}: expected a local folder (one sub-folder per class)")
    # Hidden files (.DS_Store, editor backups) are not data.
    files = [f for f in source.list_files()
             if not any(part.startswith(".") for part in f.path.split("/"))]
    if not files:
        raise InputError(f"--data {data}: the folder holds no files")
    target = open_location(to)
    present = {f.path: f.size for f in target.list_files()}
    todo = [f for f in files if present.get(f.path) != f.size]
    total = sum(f.size for f in todo)
    with tqdm(total=total, desc=f"uploading to {target.uri}", unit="B", unit_scale=True,
              unit_divisor=1000, disable=quiet) as bar:  # MB, as the summary line says
        progress = ByteProgress(bar)
        run_parallel(lambda f: target.upload_file(f.path, Path(source.root) / f.path, progress),
                     todo)
    return UploadResult(len(todo), len(files) - len(todo), total)
