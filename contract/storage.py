"""Locations: a local folder or an `s3://bucket/prefix`, behind one small interface.

DESIGN section 3: a location is a URI. S3 endpoint, region and credentials come only from the
standard AWS environment, which boto3 reads itself (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
Every S3 call goes through botocore's standard retry mode; what still fails becomes a
`StorageError` (exit 3) with one clear line, or an `InputError` (exit 2) when the location
itself is wrong (no such bucket).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from contract.errors import InputError, StorageError

# Retries: botocore's "standard" mode backs off exponentially with jitter on throttling,
# 5xx and connection errors. 5 attempts span roughly 20 s of outage.
S3_MAX_ATTEMPTS = 5
S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 60
# Parallel transfers: object stores reward concurrency; 16 keeps a laptop responsive.
TRANSFER_WORKERS = 16
READ_AHEAD = 4 * TRANSFER_WORKERS  # files read_many holds ahead of its consumer
MULTIPART_THRESHOLD = 64 * 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    """A file below a location: its path relative to the location ('/'-separated), its
    size, and a tag that changes whenever its content may have (S3 ETag + last-modified;
    a local file's mtime in ns)."""

    path: str
    size: int
    tag: str = ""


def open_location(uri: str) -> Location:
    """Parse `s3://bucket/prefix`, `file:///x` or a plain path into a Location."""
    if not uri:
        raise InputError("empty location: expected a local path or s3://bucket/prefix")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InputError(f"S3 location has no bucket: {uri!r} (expected s3://bucket/prefix)")
        return S3Location(parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file":
        return LocalLocation(Path(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise InputError(f"unsupported location scheme {parsed.scheme!r} in {uri!r}: "
                         "use a local path or s3://bucket/prefix")
    return LocalLocation(Path(uri))


def check_relative(path: str) -> str:
    """Refuse paths that would escape their location (absolute, '..', empty parts)."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or any(part in ("..", ".", "") for part in path.split("/")):
        raise InputError(f"invalid relative path {path!r}")
    return path


class Location:
    """A folder-like place. Paths given to methods are relative and '/'-separated."""

    uri: str

    def child(self, *parts: str) -> Location:
        raise NotImplementedError

    def list_files(self) -> list[FileEntry]:
        """Every file below this location, recursively, sorted by path."""
        raise NotImplementedError

    def list_dirs(self) -> list[str]:
        """Names of the immediate sub-folders (S3: common prefixes)."""
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def is_empty(self) -> bool:
        """True when nothing at all lies below this location."""
        raise NotImplementedError

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        """The file's bytes; with `limit`, at most limit + 1 of them are read, so a caller
        can refuse an oversized file without holding it."""
        raise NotImplementedError

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write one file so that readers see either nothing or all of it."""
        raise NotImplementedError

    def upload_file(self, path: str, local: Path, progress: Callable[[int], None] | None) -> None:
        raise NotImplementedError

    def download_file(self, path: str, local: Path,
                      progress: Callable[[int], None] | None = None,
                      size: int | None = None) -> None:
        """Copy one file to `local`. With `size` (what a listing or manifest declared), the
        transfer stops with OversizedObject once more than `size` bytes arrive: an object
        replaced by a bigger one after it was listed fills no disk."""
        raise NotImplementedError

    def delete(self, paths: Iterable[str]) -> None:
        raise NotImplementedError

    def check_writable(self) -> None:
        """Write and remove a small probe object here: the location (and its bucket) exists
        and these credentials may write and delete in it. Raises the storage errors."""
        probe = f".write-probe-{uuid.uuid4().hex}"
        self.write_bytes(probe, b"")
        self.delete([probe])

    def read_many(self, paths: Iterable[str]) -> Iterator[tuple[str, bytes | None]]:
        """Read several files concurrently; yields (path, bytes) in input order, None if
        missing. At most READ_AHEAD files are read ahead of the consumer, so memory stays
        bounded however many paths there are and however slow the consumer is."""
        def read(p: str) -> bytes | None:
            try:
                return self.read_bytes(p)
            except FileNotFoundError:
                return None
        with ThreadPoolExecutor(TRANSFER_WORKERS) as pool:
            pending: collections.deque = collections.deque()
            for p in paths:
                pending.append((p, pool.submit(read, p)))
                if len(pending) >= READ_AHEAD:
                    path, future = pending.popleft()
                    yield path, future.result()
            while pending:
                path, future = pending.popleft()
                yield path, future.result()

    def __str__(self) -> str:
        return self.uri


class LocalLocation(Location):
    def __init__(self, root: Path):
        self.root = root.expanduser().absolute()
        self.uri = str(self.root)

    def child(self, *parts: str) -> LocalLocation:
        return LocalLocation(self.root.joinpath(*parts))

    def _path(self, path: str) -> Path:
        return self.root / check_relative(path)

    def list_files(self) -> list[FileEntry]:
        if not self.root.is_dir():
            return []
        entries = []
        # Symlinked folders are not followed (no loops); symlinked files are read through.
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix()
                try:
                    st = full.stat()
                    size, tag = st.st_size, str(st.st_mtime_ns)
                except OSError:  # a broken symlink: listed, and reading it will fail visibly
                    size, tag = -1, ""
                entries.append(FileEntry(rel, size, tag))
        return sorted(entries, key=lambda e: e.path)

    def list_dirs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def check_writable(self) -> None:
        """As Location's, leaving no folder behind that the probe had to create."""
        created = []
        folder = self.root
        while not folder.exists() and folder != folder.parent:
            created.append(folder)
            folder = folder.parent
        try:
            super().check_writable()
        finally:
            for folder in created:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def is_empty(self) -> bool:
        return not self.root.is_dir() or not any(self.root.iterdir())

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        if limit is None:
            return self._path(path).read_bytes()
        with self._path(path).open("rb") as f:
            return f.read(limit + 1)

    def write_bytes(self, path: str, data: bytes) -> None:
        target = self._path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file in the way, no permission
            raise InputError(f"cannot create the folder {target.parent}: "
                             f"{e.strerror or e}") from e
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def upload_file(self, path: str, local: Path, progress: Callable[[int], None] | None) -> None:
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
        if progress:
            progress(local.stat().st_size)

    def download_file(self, path: str, local: Path,
                      progress: Callable[[int], None] | None = None,
                      size: int | None = None) -> None:
        if size is None:
            shutil.copyfile(self._path(path), local)
            if progress:
                progress(local.stat().st_size)
            return
        bounded = _Bounded(size, f"{self.uri}/{path}", progress)
        with self._path(path).open("rb") as src, local.open("wb") as dst:
            while chunk := src.read(min(_COPY_CHUNK, size + 1 - bounded.seen)):
                bounded(len(chunk))
                dst.write(chunk)

    def delete(self, paths: Iterable[str]) -> None:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                self._path(p).unlink()


@functools.cache
def s3_client():
    """One boto3 client per process (they are thread-safe); configuration from the AWS env."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
        max_pool_connections=TRANSFER_WORKERS * 2,
    )
    # A session of its own: boto3's default session caches the first credentials it finds.
    return boto3.session.Session().client("s3", config=config)


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, max_concurrency=8)


@contextlib.contextmanager
def s3_errors(what: str, uri: str) -> Iterator[None]:
    """Translate botocore failures (already retried) into one-line user errors."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bx

    try:
        try:
            yield
        except S3UploadFailedError as e:
            # boto3's managed upload wraps the store's answer in a message string
            # (boto3/s3/transfer.py, upload_file); the ClientError is its context.
            if isinstance(e.__context__, bx.BotoCoreError | bx.ClientError):
                raise e.__context__ from None
            raise StorageError(f"{what} {uri}: {e}") from e
    except bx.NoCredentialsError as e:
        raise StorageError(f"{what} {uri}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY (or use an instance/pod role)") from e
    except bx.ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            raise InputError(f"{what} {uri}: bucket does not exist") from e
        if code in ("NoSuchKey", "404") or status == 404:
            raise InputError(f"{what} {uri}: no such object") from e
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "ExpiredToken", "InvalidToken") or status == 403:
            raise StorageError(f"{what} {uri}: access denied by the object store ({code}); "
                               "check the S3 credentials and their permissions") from e
        raise StorageError(f"{what} {uri}: object store error {code or status}: "
                           f"{err.get('Message', e)}") from e
    except (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ConnectTimeoutError,
            bx.ReadTimeoutError, bx.ProxyConnectionError) as e:
        raise StorageError(f"{what} {uri}: cannot reach the object store after "
                           f"{S3_MAX_ATTEMPTS} attempts ({e})") from e
    except bx.BotoCoreError as e:
        raise StorageError(f"{what} {uri}: {e}") from e


class S3Location(Location):
    def __init__(self, bucket: str, prefix: str):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def child(self, *parts: str) -> S3Location:
        return S3Location(self.bucket, "/".join(p.strip("/") for p in (self.prefix, *parts) if p))

    def _key(self, path: str) -> str:
        check_relative(path)
        return f"{self.prefix}/{path}" if self.prefix else path

    def _dir_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def list_files(self) -> list[FileEntry]:
        base = self._dir_prefix()
        entries = []
        with s3_errors("cannot list", self.uri):
            pages = s3_client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base)
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(base):]
                    if rel and not rel.endswith("/"):  # skip folder marker objects
                        entries.append(FileEntry(rel, int(obj["Size"]),
                                                 f"{obj.get('ETag', '')}@"
                                                 f"{obj.get('LastModified', '')}"))
        return sorted(entries, key=lambda e: e.path)

    def list_dirs(self) -> list[str]:
        base = self._dir_prefix()
        names = []
        with s3_errors("cannot list", self.uri):
            pages = s3_client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/")
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    names.append(cp["Prefix"][len(base):].rstrip("/"))
        return sorted(n for n in names if n)

    # Least privilege on AWS grants s3:ListBucket only under a prefix (an s3:prefix
    # condition). HeadBucket carries no prefix, and without an unconditional ListBucket a
    # HEAD or GET of a missing key answers 403, not 404. So whether something exists is
    # asked with a LIST under its own key, which such a policy allows.
    def exists(self, path: str) -> bool:
        key = self._key(path)
        with s3_errors("cannot check", f"{self.uri}/{path}"):
            resp = s3_client().list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        return any(obj["Key"] == key for obj in resp.get("Contents", []))

    def check_writable(self) -> None:
        """The bucket must exist (some S3-compatible stores create one on the first write;
        a LIST under this prefix says NoSuchBucket), then the probe write and delete."""
        with s3_errors("cannot check", self.uri):
            s3_client().list_objects_v2(Bucket=self.bucket, Prefix=self._dir_prefix(),
                                        MaxKeys=1)
        super().check_writable()

    def is_empty(self) -> bool:
        with s3_errors("cannot list", self.uri):
            resp = s3_client().list_objects_v2(
                Bucket=self.bucket, Prefix=self._dir_prefix(), MaxKeys=1)
        return resp.get("KeyCount", 0) == 0

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        from botocore.exceptions import ClientError

        extra = {} if limit is None else {"Range": f"bytes=0-{limit}"}
        with s3_errors("cannot read", f"{self.uri}/{path}"):
            try:
                resp = s3_client().get_object(Bucket=self.bucket, Key=self._key(path),
                                              **extra)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise FileNotFoundError(f"{self.uri}/{path}") from e
                # 403 for a key that is not there, under a prefix-scoped ListBucket
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403 and \
                        not self.exists(path):
                    raise FileNotFoundError(f"{self.uri}/{path}") from e
                raise
            return resp["Body"].read()

    def write_bytes(self, path: str, data: bytes) -> None:
        # A single PUT is atomic: readers see the old object, no object, or all of the new one.
        with s3_errors("cannot write", f"{self.uri}/{path}"):
            s3_client().put_object(Bucket=self.bucket, Key=self._key(path), Body=data)

    def upload_file(self, path: str, local: Path, progress: Callable[[int], None] | None) -> None:
        with s3_errors("cannot upload to", f"{self.uri}/{path}"):
            s3_client().upload_file(str(local), self.bucket, self._key(path),
                                    Callback=progress, Config=_transfer_config())

    def download_file(self, path: str, local: Path,
                      progress: Callable[[int], None] | None = None,
                      size: int | None = None) -> None:
        if size is not None:
            # boto3 reads the object's size itself (HEAD), so a bigger object swapped in
            # after the listing would be fetched whole: every received chunk is counted,
            # and the first one past `size` aborts the transfer (s3transfer cancels the
            # other parts and removes its temporary file).
            progress = _Bounded(size, f"{self.uri}/{path}", progress)
        with s3_errors("cannot download", f"{self.uri}/{path}"):
            s3_client().download_file(self.bucket, self._key(path), str(local),
                                      Callback=progress, Config=_transfer_config())

    def delete(self, paths: Iterable[str]) -> None:
        keys = [{"Key": self._key(p)} for p in paths]
        with s3_errors("cannot delete from", self.uri):
            for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                answer = s3_client().delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
                # A 200 can still refuse some keys: quiet mode lists only those.
                if failed := answer.get("Errors"):
                    first = failed[0]
                    raise StorageError(
                        f"cannot delete from {self.uri}: {len(failed)} of the objects were "
                        f"not deleted ({first.get('Key')}: {first.get('Code')} "
                        f"{first.get('Message', '')})".rstrip())


def run_parallel(fn: Callable, items: Iterable, workers: int = TRANSFER_WORKERS) -> None:
    """fn(item) for every item on a thread pool. The first failure cancels what has not
    started yet and is raised (after the running ones finish)."""
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


class OversizedObject(InputError):
    """A downloaded object is bigger than the size it was listed or declared with."""


_COPY_CHUNK = 1 << 20


class _Bounded:
    """A progress callback that counts bytes and raises OversizedObject past `limit`
    (thread-safe: s3transfer calls it from its worker threads)."""

    def __init__(self, limit: int, uri: str, then: Callable[[int], None] | None):
        self.limit, self.uri, self.then, self.seen = limit, uri, then, 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.seen += n
            if self.seen > self.limit:
                raise OversizedObject(f"{self.uri} has more than the {self.limit} bytes it "
                                      "was listed with (changed while it was downloaded)")
        if self.then:
            self.then(n)


class ByteProgress:
    """A thread-safe byte counter feeding a tqdm bar (boto3 calls back from worker threads)."""

    def __init__(self, bar):
        self._bar = bar
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)
