"""The model puller: verified versions from object storage to the serving volume.

TF Serving since 2.7 cannot read `s3://` (tensorflow/serving#1963), so it serves a local
folder this fills: `<dest>/<version>/`. A version is considered only once its
`_MANIFEST.json` exists and parses (the trainer writes it last). Every listed file is
downloaded into a hidden temporary folder inside `dest`, its size and sha256 checked, and
only then is the folder renamed into place: a polling server never sees a partial or
tampered version. With a verify key, the version's `model.sig` is checked first (before any
other file is fetched) and the staged folder verified again before the rename. A rejected
version is tried again only when something of it changes in the store. The newest `keep`
versions stay; older ones are removed. Nothing local is ever removed because the store
cannot be reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from contract.errors import EXIT_OK, EXIT_STORAGE, InputError, UserError
from contract.labels import MAX_LABELS_BYTES, Labels, LabelsError, parse_labels
from contract.manifest import MANIFEST_FILE, Manifest, ManifestError, parse_manifest
from contract.names import LABELS_OBJECT, STAGING_PREFIX, parse_version
from contract.signing import VerifyKey
from contract.storage import (
    ByteProgress,
    FileEntry,
    LocalLocation,
    Location,
    open_location,
    run_parallel,
)
from contract.versions import (  # noqa: F401 (Rejected and read_manifest: serving's API)
    DOWNLOAD_WORKERS,
    MAX_VERSION_MIB,
    Rejected,
    check_sizes,
    fetch_file,
    fetch_head,
    read_manifest,
    verify_signed_folder,
)
from serving import defaults
from serving.layout import SAVED_MODEL, base_path_problem
from serving.server_config import Served, next_step, read_state, render, write_atomically

log = logging.getLogger(__name__)
_BROKEN = object()  # the store's labels object was refused
# A version the server's config no longer names stays on disk this long, well beyond the
# server's --model_config_file_poll_wait_seconds (10 s in k8s/ and compose).
CONFIG_GRACE_S = 60.0
BACKOFF_MAX_S = 300  # outage backoff stops growing at five minutes
# Version folders that did not install (no manifest yet, or rejected) are listed again on
# each sync while there are at most this many; beyond, only this many a sync: those that
# failed fewest times first, then those looked at longest ago (a trainer's upload seen
# half-way is looked at again before old junk). Folders never seen are always looked at.
# 1,000 junk folders cost 1,000 listings once, then 32 a sync, not 1,000 every sync.
MAX_RECHECKS_PER_SYNC = 32
MAX_VERSIONS = defaults.PULL_MAX_VERSIONS
WAIT_LOG_EVERY_S = 60  # --wait-timeout: one "still waiting" line a minute


@dataclass
class SyncResult:
    installed: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    local: list[int] = field(default_factory=list)
    new_rejections: list[str] = field(default_factory=list)  # refused for the first time
    removed: list[int] = field(default_factory=list)


class Puller:
    def __init__(self, source: str, dest: str | Path, keep: int = 2, quiet: bool = False,
                 verify_key: VerifyKey | None = None, model_config: str | Path | None = None,
                 serve_newest: bool = False, max_version_mib: int = MAX_VERSION_MIB,
                 max_versions: int = MAX_VERSIONS):
        if keep < 1:
            raise UserError(f"--keep must be at least 1, got {keep}")
        if max_version_mib < 1:
            raise UserError(f"--max-version-mib must be at least 1, got {max_version_mib}")
        self.max_version_mib = max_version_mib
        if max_versions < 1:
            raise UserError(f"--max-versions must be at least 1, got {max_versions}")
        self.max_versions = max_versions
        self._dropped_rollback: list[int] = []
        self.source: Location = open_location(source)
        self.dest = Path(dest).expanduser().absolute()
        self.dest_shown = str(dest)  # as the user wrote it, in messages
        self.model_name = self.source.uri.rstrip("/").rsplit("/", 1)[-1]
        self._check_dest()
        # --dest the very folder --source names (a trainer's local --output): nothing to
        # copy, nothing of it to remove; the sync only writes the server's models.config
        # from the labels there, so a local server follows label, promote and rollback.
        self.in_place = isinstance(self.source, LocalLocation) and \
            self.source.root.resolve() == self.dest.resolve()
        if self.in_place and verify_key is not None:
            raise UserError("--verify-key with --dest the --source folder itself: nothing is "
                            "fetched, so nothing is verified; copy to another --dest to verify")
        if self.in_place and model_config is None:
            raise UserError("--dest is the --source folder itself: give --model-config FILE "
                            "(what this sync writes); nothing else is done in place")
        self.keep = keep
        self.quiet = quiet
        self.verify_key = verify_key  # None: signatures are not required
        self._rejected: dict[int, tuple[str, str]] = {}  # version -> (store state, reason)
        # With labels in the store: the models.config written for the server, and whether
        # the newest version is served beside the labelled ones.
        self.model_config = Path(model_config).expanduser().absolute() if model_config \
            else None
        self.serve_newest = serve_newest
        self._refused_labels: str | None = None  # digest of a labels object refused
        self._unservable: dict[str, int] = {}  # label -> version not installable (logged)
        self.config_grace = CONFIG_GRACE_S
        self._dropped: dict[int, float] = {}  # version -> when it left the server's config
        self._failed: dict[int, tuple[int, int]] = {}  # version -> (failures, at which sync)
        self._syncs = 0
        self.newest_published: int | None = None  # the newest version seen with a manifest
        self.metrics = None  # serving.puller_metrics.PullerMetrics, with --metrics-port
        self._rechecks: set[int] | None = None  # this sync's, when they are bounded

    def _check_dest(self) -> None:
        """--dest is the model's own folder (TF Serving's base path), not a version folder
        nor the folder above it. A wrong one is refused before anything is downloaded."""
        if not self.dest.exists():
            return
        problem = base_path_problem(self.dest, "--dest")
        is_a_version = (self.dest / SAVED_MODEL).is_file()
        is_above_one = problem is not None and "which holds versions" in problem
        if is_a_version or is_above_one:
            raise InputError(f"--dest {problem}")

    # -- local state ----------------------------------------------------------------------
    def local_versions(self) -> list[int]:
        """Installed versions whose manifest is present and whose files have their sizes."""
        if not self.dest.is_dir():
            return []
        found = []
        for entry in self.dest.iterdir():
            version = parse_version(entry.name)
            if version is None or not entry.is_dir():
                continue
            try:
                manifest = parse_manifest((entry / MANIFEST_FILE).read_bytes(), version)
            except (OSError, ManifestError):
                continue
            if all((entry / f.path).is_file() and (entry / f.path).stat().st_size == f.size
                   for f in manifest.files):
                found.append(version)
        return sorted(found)

    def clean_staging(self) -> None:
        """Remove temporary folders a killed run left behind (never in place: there they
        may be a training run's version being assembled)."""
        if self.dest.is_dir() and not self.in_place:
            for entry in self.dest.iterdir():
                if entry.name.startswith(STAGING_PREFIX):
                    shutil.rmtree(entry, ignore_errors=True)

    # -- one sync -------------------------------------------------------------------------
    def remote_versions(self) -> list[int]:
        return sorted((v for v in map(parse_version, self.source.list_dirs()) if v),
                      reverse=True)

    def read_manifest(self, version: int) -> Manifest:
        """The version's manifest, parsed strictly."""
        return read_manifest(self.source, self.model_name, version)

    def sync_once(self) -> SyncResult:
        """Bring the versions to serve (the labelled ones when the store has labels, else
        the newest `keep` verified ones); write the server's models.config; remove local
        versions no longer needed."""
        self.dest.mkdir(parents=True, exist_ok=True)
        self.clean_staging()
        result = SyncResult()
        local = set(self.local_versions())
        remote = self.remote_versions()
        self._plan_rechecks(remote, local)
        labels = self._store_labels()
        if labels is _BROKEN:  # refused, logged: the server keeps what it was given
            result.local = self.local_versions()
            return result
        if labels is not None:
            targets = self._bounded(labels)
            if self.serve_newest:
                for version in remote:  # the newest that verifies
                    if version in local or self._try_install(version, result, scan=True):
                        targets.add(version)
                        break
            ready = {v for v in sorted(targets, reverse=True)
                     if v in local or self._try_install(v, result)}
            written = self._written()
            for label, version in labels.labels.items():
                # A label whose new version cannot be installed keeps the one it had.
                old = written.labels.get(label) if written else None
                if version not in ready and old is not None and old not in ready and (
                        old in local or self._try_install(old, result)):
                    ready.add(old)
            desired = self._labelled(labels, ready, written)
            step = self._write_config(desired, written)
            needed = set(desired.versions) | set(step.versions if step and step.versions
                                                 else ())
            result.removed = self.prune(keep=self._with_grace(needed))
        else:
            wanted: list[int] = []
            for version in remote:
                if len(wanted) >= self.keep:
                    break
                if version in local or self._try_install(version, result, scan=True):
                    wanted.append(version)
            self._write_config(Served(None, {}), self._written())
            result.removed = self.prune()
        result.local = self.local_versions()
        return result

    def _bounded(self, labels: Labels) -> set[int]:
        """The versions the labels pin, within --max-versions: every version a label names
        now, then rollback targets, newest first, while there is room. The volume and the
        server's memory are sized for that many (each VGG16 version is 0.55 GB); a second
        label with its own rollback target would otherwise outgrow both."""
        current = set(labels.labels.values())
        rollback = sorted(labels.pinned() - current, reverse=True)
        room = max(0, self.max_versions - len(current) - (1 if self.serve_newest else 0))
        kept, dropped = rollback[:room], rollback[room:]
        if dropped and self._dropped_rollback != dropped:
            log.warning("not keeping rollback target(s) %s: the labels pin %d versions, "
                        "more than --max-versions %d (raise it together with the volume and "
                        "the server's memory)", dropped, len(current) + len(rollback),
                        self.max_versions)
        self._dropped_rollback = dropped
        if len(current) > self.max_versions:
            log.warning("the labels name %d versions, more than --max-versions %d: all are "
                        "kept, and the volume and memory may not hold them", len(current),
                        self.max_versions)
        return current | set(kept)

    def _plan_rechecks(self, remote: list[int], local: set[int]) -> None:
        """Which folders that failed before this sync looks at again (MAX_RECHECKS_PER_SYNC)."""
        self._syncs += 1
        present = set(remote)
        self._failed = {v: f for v, f in self._failed.items() if v in present}
        self._rejected = {v: r for v, r in self._rejected.items() if v in present}
        failed = [v for v in remote if v in self._failed and v not in local]
        self._rechecks = None if len(failed) <= MAX_RECHECKS_PER_SYNC else set(
            sorted(failed, key=lambda v: (*self._failed[v], -v))[:MAX_RECHECKS_PER_SYNC])

    def _try_install(self, version: int, result: SyncResult, scan: bool = False) -> bool:
        """Install one version if it is published and verifies; False (logged, remembered
        with the store's state of it) if not. `scan`: a folder the sync goes through newest
        first, skipped when it failed before and is not among this sync's rechecks; a
        labelled version is always looked at."""
        if self.in_place:  # complete versions are already local; the others are not ready
            return False
        if scan and self._rechecks is not None and version in self._failed and \
                version not in self._rechecks:
            if version in self._rejected:
                result.rejected[version] = self._rejected[version][1]
            return False
        if self._examine(version, result):
            self._failed.pop(version, None)
            return True
        self._failed[version] = (self._failed.get(version, (0, 0))[0] + 1, self._syncs)
        return False

    def _examine(self, version: int, result: SyncResult) -> bool:
        """List the version's folder; install it if it is published and verifies."""
        listing = self.source.child(str(version)).list_files()
        stored = {e.path: e for e in listing}
        if MANIFEST_FILE not in stored:
            log.info("version %d has no manifest yet; ignored", version)
            return False
        self.newest_published = max(self.newest_published or 0, version)
        # A rejected version is tried again only once something in it changed.
        state = hashlib.sha256(repr(sorted(listing, key=lambda e: e.path)).encode()) \
            .hexdigest()
        seen = self._rejected.get(version)
        if seen is not None and seen[0] == state:
            result.rejected[version] = seen[1]
            return False
        try:
            self.install(version, self.read_manifest(version), stored)
        except (Rejected, OSError, ValueError, UserError) as e:
            # Whatever one version holds, it costs that version only and never stops
            # the puller (an init container that crashed would keep every pod out). An
            # object the store will not hand out (SSE-C without its key, archived to
            # Glacier) is this version's problem too, unless the store itself stopped
            # answering: then the sync fails as an outage.
            if isinstance(e, UserError) and not self._store_answers():
                raise
            reason = str(e) if isinstance(e, Rejected | UserError) else \
                f"{type(e).__name__}: {e}"
            log.warning("rejected version %d of %s: %s (tried again when it changes in "
                        "the store)", version, self.model_name, reason)
            result.rejected[version] = reason
            result.new_rejections.append(reason)
            self._rejected[version] = (state, reason)
            return False
        self._rejected.pop(version, None)
        result.installed.append(version)
        return True

    def _store_answers(self) -> bool:
        """The model's folder can still be listed: a failure was one object's, not the
        store's."""
        try:
            self.source.list_dirs()
        except UserError:
            return False
        return True

    # -- labels and the server's models.config --------------------------------------------
    def _store_labels(self):
        """The store's labels (None when it has none), or _BROKEN when the labels object
        is refused: logged once per content, and nothing changes for the server."""
        try:
            data = self.source.read_bytes(LABELS_OBJECT, limit=MAX_LABELS_BYTES)
        except FileNotFoundError:
            return None
        try:
            labels = parse_labels(data, self.model_name)
        except LabelsError as e:
            digest = hashlib.sha256(data).hexdigest()
            if self._refused_labels != digest:
                log.warning("labels refused: %s; the server keeps the versions and labels "
                            "it has", e)
                self._refused_labels = digest
            return _BROKEN
        self._refused_labels = None
        return labels if labels.labels else None

    def _labelled(self, labels: Labels, ready: set[int], previous: Served | None) -> Served:
        """Labels whose version is installed; a label whose version cannot be installed
        keeps the version it had in `previous` (if that one is still here)."""
        mapping: dict[str, int] = {}
        for label, version in labels.labels.items():
            if version in ready:
                mapping[label] = version
                continue
            kept = previous.labels.get(label) if previous else None
            note = f"; keeps version {kept}" if kept in ready else ""
            if kept in ready:
                mapping[label] = kept
            if self._unservable.get(label) != version:
                log.warning("label %s names version %d of %s, which is not installed%s",
                            label, version, self.model_name, note)
                self._unservable[label] = version
        for label in [k for k, v in self._unservable.items() if mapping.get(k) == v]:
            del self._unservable[label]
        return Served(tuple(sorted(ready)), mapping)

    def _with_grace(self, needed: set[int]) -> set[int]:
        """`needed`, and the versions that left the server's config less than
        `config_grace` seconds ago: a version deleted before the server re-read its config
        would be unloaded while a label still named it (NOT_FOUND for that label)."""
        now = time.monotonic()
        for version in self.local_versions():
            if version in needed:
                self._dropped.pop(version, None)
            else:
                self._dropped.setdefault(version, now)
        return needed | {v for v, since in self._dropped.items()
                         if now - since < self.config_grace}

    def _written(self) -> Served | None:
        return read_state(self.model_config) if self.model_config else None

    def _write_config(self, desired: Served, written: Served | None) -> Served | None:
        """Write the next safe step from `written` towards `desired` (next_step)."""
        if self.model_config is None:
            return None
        step = next_step(written, desired)
        if step != written:
            write_atomically(self.model_config, render(self.model_name, str(self.dest), step))
            shown = "newest version" if step.versions is None else \
                f"versions {list(step.versions)}"
            labels = ", ".join(f"{k}={v}" for k, v in sorted(step.labels.items()))
            log.info("model server config: %s%s%s", shown, f", labels {labels}" if labels
                     else "", "" if step == desired else
                     " (a label moves on the next sync, once the server has loaded its "
                     "version)")
        return step

    def install(self, version: int, manifest: Manifest, stored: dict[str, FileEntry]) -> None:
        """Download, verify, and atomically rename into place."""
        self.dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=self.dest))
        deleted = Rejected("deleted from the store while it was being downloaded")
        try:
            try:
                self._download(version, manifest, stored, staging)
            except Rejected as e:
                # A file vanished mid-download because the whole version did: say that.
                if not self.source.child(str(version)).exists(MANIFEST_FILE):
                    raise deleted from e
                raise
            # Deleted (or unpublished) while we downloaded: it no longer exists for readers.
            if not self.source.child(str(version)).exists(MANIFEST_FILE):
                raise deleted
            if self.verify_key is not None:
                verify_signed_folder(staging, self.verify_key)
            (staging / MANIFEST_FILE).write_text(manifest_text(manifest))
            os.chmod(staging, 0o755)  # mkdtemp makes it private; the server may be another user
            os.rename(staging, self.dest / str(version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        signed = f", signature verified with key {self.verify_key.key_id}" \
            if self.verify_key is not None else ""
        log.info("installed version %d of %s (%d files, %.1f MB%s)", version, self.model_name,
                 len(manifest.files), sum(f.size for f in manifest.files) / 1e6, signed)

    def _download(self, version: int, manifest: Manifest, stored: dict[str, FileEntry],
                  staging: Path) -> None:
        remote = self.source.child(str(version))
        if isinstance(remote, LocalLocation):
            # A local source must not smuggle links in: no listed file, and no folder on the
            # way to it (the version folder included), may be a symbolic link.
            if remote.root.is_symlink():
                raise Rejected(f"the version folder {remote.root.name} is a symbolic link")
            for f in manifest.files:
                parts = f.path.split("/")
                for depth in range(1, len(parts) + 1):
                    if remote.root.joinpath(*parts[:depth]).is_symlink():
                        kind = "a symbolic link" if depth == len(parts) else \
                            f"under the symbolically linked folder {'/'.join(parts[:depth])}"
                        raise Rejected(f"{f.path} is {kind}")
        check_sizes(manifest, stored, self.max_version_mib)
        # The signature and identity before any other file: a version not signed by our
        # key, or signed as another model or version, costs a few small downloads.
        files = fetch_head(remote, manifest, staging, self.verify_key)
        total = sum(f.size for f in files)
        bar = tqdm(total=total, desc=f"pulling version {version}", unit="B", unit_scale=True,
                   unit_divisor=1024, disable=self.quiet)
        progress = ByteProgress(bar)
        with bar:
            run_parallel(lambda f: fetch_file(remote, f, staging, progress),
                         sorted(files, key=lambda f: -f.size), DOWNLOAD_WORKERS)

    def prune(self, keep: set[int] | None = None) -> list[int]:
        """Keep the newest `keep` installed versions (the newest is never removed), or with
        labels exactly the versions in `keep`. Nothing in place: the versions are the
        trainer's own."""
        removed = []
        if self.in_place:
            return removed
        local = self.local_versions()
        doomed_versions = local[:-self.keep] if keep is None else \
            [v for v in local if v not in keep]
        for version in doomed_versions:
            # Rename first so a polling server sees the version vanish at once, not shrink.
            doomed = self.dest / f"{STAGING_PREFIX}removed-{version}"
            with contextlib.suppress(OSError):
                os.rename(self.dest / str(version), doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(version)
                log.info("removed old version %d of %s", version, self.model_name)
        return removed

    # -- watch mode -----------------------------------------------------------------------
    def _local_or_unknown(self) -> list[int] | str:
        try:
            return self.local_versions()
        except OSError:
            return "(the local folder cannot be read)"

    def watch(self, interval: float, stop: threading.Event) -> None:
        """Sync every `interval` seconds until `stop` is set. Store outages and refused
        credentials are logged and retried with backoff; local versions stay untouched."""
        failures = 0
        while not stop.is_set():
            try:
                result = self.sync_once()
                if self.metrics is not None:
                    newest = max(result.local + [self.newest_published or 0]) or None
                    self.metrics.synced(result, newest)
                if failures:
                    log.info("object store reachable again")
                failures = 0
                if result.installed or result.removed:
                    log.info("now holding versions %s", result.local)
            except (UserError, OSError) as e:  # store down, credentials refused, bucket
                # missing; or the local volume: not writable (a Docker volume created owned
                # by root), full. One line and a retry with backoff, never a crash loop.
                failures += 1
                if self.metrics is not None:
                    self.metrics.failed()
                reason = str(e) if isinstance(e, UserError) else f"local folder: {_os_error(e)}"
                log.warning("sync failed (%s); keeping local versions %s; retrying", reason,
                            self._local_or_unknown())
            delay = interval if not failures else min(interval * 2 ** (failures - 1),
                                                      max(interval, BACKOFF_MAX_S))
            stop.wait(delay)


def _os_error(e: OSError) -> str:
    """An OSError of the local folder as one line: what, and on which path."""
    return f"{e.strerror or e}: {getattr(e, 'filename', '') or ''}"


def manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest.raw, indent=2) + "\n"


def wait_for_interrupt() -> threading.Event:
    """An event set by SIGTERM/SIGINT (the sidecar's stop signal)."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_once_status(puller: Puller) -> tuple[int, str]:
    """The init container's answer: (exit code, one line)."""
    try:
        result = puller.sync_once()
    except UserError as e:
        local = puller.local_versions()
        if local:
            return EXIT_OK, (f"cannot sync ({e}); serving the local versions {local}")
        return e.exit_code, str(e)
    except OSError as e:  # the local folder: not writable, full, not a folder
        return EXIT_STORAGE, f"cannot write --dest {puller.dest_shown}: {_os_error(e)}"
    if result.local:
        signed = f" (signatures verified with key {puller.verify_key.key_id})" \
            if puller.verify_key is not None else ""
        return EXIT_OK, f"versions present in {puller.dest_shown}: {result.local}{signed}"
    reasons = "; ".join(f"{v}: {r}" for v, r in result.rejected.items())
    # Nothing to serve yet is an environment state (the first training run has not
    # published), not bad input: exit 3, which a Kubernetes Job or init container retries.
    return EXIT_STORAGE, (f"no verified version of {puller.model_name!r} under "
                          f"{puller.source.uri}" + (f" (rejected {reasons})" if reasons else ""))


def wait_for_first_version(puller: Puller, timeout: float, interval: float,
                           stop: threading.Event) -> tuple[int, str]:
    """Sync until a verified version is present locally, or `timeout` seconds pass.

    A first deploy starts serving pods before the first training run has published: an init
    container that exited non-zero would go into Init:CrashLoopBackOff (back-off of up to 5
    minutes) instead of starting within one `interval` of the version appearing.
    """
    started = time.monotonic()
    last_note = None
    while True:
        code, message = run_once_status(puller)
        waited = time.monotonic() - started
        if code == EXIT_OK or stop.is_set():
            return code, message
        if waited >= timeout:
            return code, f"{message}; gave up after waiting {waited:.0f} s (--wait-timeout)"
        if last_note is None or time.monotonic() - last_note >= WAIT_LOG_EVERY_S:
            log.info("waiting for the first verified version of %s under %s (%.0f s of %.0f "
                     "s so far): %s", puller.model_name, puller.source.uri, waited, timeout,
                     message)
            last_note = time.monotonic()
        stop.wait(min(interval, max(0.0, timeout - waited)))

