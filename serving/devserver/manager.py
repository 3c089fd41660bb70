"""Model discovery, loading and version bookkeeping, the way TF Serving does it.

For each configured model, the base path is polled every `poll_seconds`: sub-folders whose
name is an integer are versions (anything else, like a puller's temporary folder, is
ignored). The version policy (latest N by default, all, or specific) picks the aspired
versions; new ones are loaded (and warmed up) in the background, and old ones are unloaded
only once a newer aspired version is AVAILABLE (availability-preserving), so there is always
a version to serve. Every version ever seen stays in the status history, as in TF Serving.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from serving.devserver.errors import (
    ServingError,
    failed_precondition,
    invalid_argument,
    not_found,
)
from serving.devserver.inference import ModelRef
from serving.devserver.servable import Servable, load_servable
from serving.layout import base_path_problem

log = logging.getLogger(__name__)
_VERSION_DIR = re.compile(r"^\s*\+?\d+\s*$")  # absl::SimpleAtoi, non-negative


class State(enum.IntEnum):
    """tensorflow.serving.ModelVersionStatus.State."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class VersionRecord:
    version: int
    state: State
    error: ServingError | None = None
    servable: Servable | None = None


class ManagedModel:
    def __init__(self, config):
        self.config = config
        self.name: str = config.name
        self.base_path = Path(config.base_path)
        self.labels: dict[str, int] = dict(config.version_labels)
        self.records: dict[int, VersionRecord] = {}
        self.failed_on_disk: set[int] = set()  # failed loads not retried while they stay
        self.base_path_missing_logged = False
        self.paths: dict[int, str] = {}  # version -> its folder's name under base_path
        self.duplicates: set[tuple[int, str]] = set()

    def versions_on_disk(self) -> list[int] | None:
        try:
            names = os.listdir(self.base_path)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot list %s: %s", self.base_path, e)
            return None
        # Each version keeps its own folder name: "00000123" is version 123, loaded from
        # there (file_system_storage_path_source.cc, IndexChildrenByVersion, which also
        # warns when two names give one version and keeps one of them).
        paths: dict[int, str] = {}
        for name in sorted(names):
            if not _VERSION_DIR.match(name) or not (self.base_path / name).is_dir():
                continue
            version = int(name)
            if version in paths and (version, name) not in self.duplicates:
                self.duplicates.add((version, name))  # said once, not on every poll
                log.warning("Duplicate version directories detected. Version %d will be "
                            "loaded from %s, %s will be ignored.", version, name,
                            paths[version])
            paths[version] = name
        self.paths = paths
        return sorted(paths)

    def version_path(self, version: int) -> Path:
        return self.base_path / self.paths.get(version, str(version))

    def aspired(self, on_disk: list[int]) -> list[int]:
        policy = self.config.model_version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return on_disk
        if choice == "specific":
            wanted = set(policy.specific.versions)
            return [v for v in on_disk if v in wanted]
        n = max(1, policy.latest.num_versions) if choice == "latest" else 1
        return on_disk[-n:]

    def available(self) -> list[int]:
        return sorted(v for v, r in self.records.items() if r.state == State.AVAILABLE)


class ModelManager:
    """Owns every servable; `lookup` is what request handlers call."""

    def __init__(self, configs: list, poll_seconds: float,
                 warmup: Callable[[Servable], int] | None = None,
                 max_load_retries: int = 5, load_retry_interval: float = 60.0,
                 allow_unavailable_labels: bool = False,
                 config_file: str | None = None, config_poll_seconds: float = 0.0):
        self.models = {c.name: ManagedModel(c) for c in configs}
        for model in self.models.values():
            model.labels = {}  # assigned by reload(), under TF Serving's rule
        self.allow_unavailable_labels = allow_unavailable_labels
        # --model_config_file_poll_wait_seconds: the file is re-read and applied like
        # Server::PollFilesystemAndReloadConfig (model_servers/server.cc).
        self.config_file = config_file
        self.config_poll_seconds = config_poll_seconds
        self._initial_configs = configs
        self.poll_seconds = poll_seconds
        self.warmup = warmup
        # As TF Serving's --max_num_load_retries / --load_retry_interval_micros: a version
        # that fails to load (or to warm up) is tried again, LOADING meanwhile, before it is
        # reported END (core/loader_harness.cc).
        self.max_load_retries = max(0, max_load_retries)
        self.load_retry_interval = max(0.0, load_retry_interval)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- configuration ----------------------------------------------------------------------
    def reload(self, configs: list) -> None:
        """Apply a new model list, as ServerCore::ReloadConfig: the labels first (all or
        nothing: FAILED_PRECONDITION leaves everything as it was), then the models and
        their version policies; new versions load on the next poll."""
        with self._lock:
            labels = {c.name: self._check_labels(c) for c in configs}
            wanted = {c.name for c in configs}
            for name in [n for n in self.models if n not in wanted]:
                model = self.models.pop(name)
                for record in model.records.values():
                    record.servable, record.state = None, State.END
                log.info("model %s removed from the configuration; unloaded", name)
            for config in configs:
                model = self.models.get(config.name)
                if model is None:
                    model = self.models[config.name] = ManagedModel(config)
                model.config = config
                model.base_path = Path(config.base_path)
                if model.labels != labels[config.name]:
                    log.info("version labels of %s: %s", config.name, ", ".join(
                        f"{k}={v}" for k, v in sorted(labels[config.name].items())) or "none")
                model.labels = labels[config.name]

    def _check_labels(self, config) -> dict[str, int]:
        """ServerCore::UpdateModelVersionLabelMap (model_servers/server_core.cc): a label
        may name only an AVAILABLE version; with --allow_version_labels_for_unavailable_models
        a new label (or one keeping its version) may name any version."""
        model = self.models.get(config.name)
        current = model.labels if model else {}
        available = set(model.available()) if model else set()
        for label, version in config.version_labels.items():
            allow_any = self.allow_unavailable_labels and current.get(label, version) == version
            if not allow_any and version not in available:
                raise failed_precondition(
                    f"Request to assign label to version {version} of model {config.name}, "
                    "which is not currently available for inference")
        return dict(config.version_labels)

    def _reload_from_file(self) -> None:
        from serving.devserver.config import ConfigError, load_models

        try:
            configs = load_models(self.config_file)
        except ConfigError as e:
            log.error("Failed to read ModelServerConfig file: %s", e)
            return
        try:
            self.reload(configs)
        except ServingError as e:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", e.message)

    # -- discovery and loading ------------------------------------------------------------
    def poll_once(self) -> None:
        for model in self.models.values():
            self._poll_model(model)

    def _poll_model(self, model: ManagedModel) -> None:
        on_disk = model.versions_on_disk()
        if on_disk is None:
            if not model.base_path_missing_logged:
                log.warning("FileSystemStoragePathSource: could not find base path %s for "
                            "servable %s; keeps serving what is loaded", model.base_path,
                            model.name)
                model.base_path_missing_logged = True
            return
        model.base_path_missing_logged = False
        if not on_disk and not model.records:
            log.debug("no versions of servable %s found under base path %s", model.name,
                      model.base_path)
        model.failed_on_disk &= set(on_disk)  # a failed version that went away may retry
        aspired = model.aspired(on_disk)
        for version in aspired:
            record = model.records.get(version)
            loaded_or_loading = record is not None and record.state in (
                State.START, State.LOADING, State.AVAILABLE)
            if not loaded_or_loading and version not in model.failed_on_disk:
                self._load(model, version)
        self._unload_unaspired(model, set(aspired), set(on_disk))

    def _load(self, model: ManagedModel, version: int) -> None:
        with self._lock:
            model.records[version] = VersionRecord(version, State.START)
            model.records[version].state = State.LOADING
        log.info("loading servable version {name: %s version: %d}", model.name, version)
        started = time.perf_counter()
        for attempt in range(self.max_load_retries + 1):
            try:
                servable = load_servable(model.name, version, model.version_path(version))
                warmed = self.warmup(servable) if self.warmup else 0
                break
            except ServingError as e:
                error = e
            except Exception as e:  # a loader bug must not kill the polling thread
                log.exception("unexpected error loading %s version %d", model.name, version)
                error = ServingError(grpc.StatusCode.UNKNOWN, str(e))
            if attempt == self.max_load_retries or self._stop.wait(self.load_retry_interval):
                self._failed(model, version, error)
                return
            log.warning("loading servable version {name: %s version: %d} failed (%s); retry "
                        "%d of %d in %.1f s", model.name, version, error.message, attempt + 1,
                        self.max_load_retries, self.load_retry_interval)
        with self._lock:
            model.records[version] = VersionRecord(version, State.AVAILABLE, servable=servable)
        log.info("servable version {name: %s version: %d} AVAILABLE after %.1f s "
                 "(%d warmup records)", model.name, version, time.perf_counter() - started,
                 warmed)

    def _failed(self, model: ManagedModel, version: int, error: ServingError) -> None:
        log.error("servable version {name: %s version: %d} failed to load: %s: %s",
                  model.name, version, error.code_name, error.message)
        with self._lock:
            model.records[version] = VersionRecord(version, State.END, error=error)
            model.failed_on_disk.add(version)

    def _unload_unaspired(self, model: ManagedModel, aspired: set[int],
                          on_disk: set[int]) -> None:
        with self._lock:
            available = model.available()
            aspired_available = [v for v in available if v in aspired]
            for version in available:
                if version in aspired:
                    continue
                # Availability preserving: only unload once an aspired version serves.
                if not aspired_available:
                    if version not in on_disk and version == max(available):
                        log.warning("version %d of %s was removed from disk; still serving it "
                                    "from memory until a new version is available",
                                    version, model.name)
                    continue
                record = model.records[version]
                record.state = State.UNLOADING
                log.info("unloading servable version {name: %s version: %d}", model.name,
                         version)
                record.servable = None  # the last reference: TF frees the variables
                record.state = State.END

    def start(self, wait_timeout: float | None = None) -> None:
        """Initial load of every model, then background polling. Like TF Serving, returns
        only once each model's first aspired version is AVAILABLE or has failed."""
        deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        self.reload(self._initial_configs)  # labels first, as TF Serving: may refuse
        last_note = 0.0
        while True:
            self.poll_once()
            pending = [m.name for m in self.models.values() if not m.records]
            if not pending:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no versions appeared for: {', '.join(pending)}")
            if time.monotonic() - last_note > 10:
                for name in pending:
                    model = self.models[name]
                    problem = base_path_problem(model.base_path, "--model-base-path")
                    log.warning("waiting for the first version of %s under %s%s", name,
                                model.base_path, f": {problem}" if problem else "")
                last_note = time.monotonic()
            time.sleep(min(self.poll_seconds, 1.0) if self.poll_seconds > 0 else 1.0)
        failed = {m.name: r for m in self.models.values() for r in m.records.values()
                  if r.state == State.END and r.error and not m.available()}
        if failed:
            detail = ", ".join(f"{{name: {n} version: {r.version}}} due to error: "
                               f"{r.error.code_name}: {r.error.message}"
                               for n, r in failed.items())
            raise RuntimeError(f"{len(failed)} servable(s) did not become available: {detail}")
        if self.poll_seconds > 0:
            self._threads.append(threading.Thread(
                target=self._poll_loop, args=(self.poll_seconds, self.poll_once),
                name="model-poller", daemon=True))
        if self.config_file and self.config_poll_seconds > 0:
            self._threads.append(threading.Thread(
                target=self._poll_loop, args=(self.config_poll_seconds, self._reload_from_file),
                name="config-poller", daemon=True))
        for thread in self._threads:
            thread.start()

    def _poll_loop(self, seconds: float, work: Callable[[], None]) -> None:
        while not self._stop.wait(seconds):
            try:
                work()
            except Exception:  # keep polling whatever one round hit
                log.exception("polling failed")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    # -- what requests see ----------------------------------------------------------------
    def lookup(self, ref: ModelRef) -> Servable:
        with self._lock:
            model = self.models.get(ref.name)
            version = ref.version
            if ref.label is not None:
                if model is None or ref.label not in model.labels:
                    raise invalid_argument(f"Unrecognized servable version label: {ref.label}")
                version = model.labels[ref.label]
            if version is None:
                available = model.available() if model else []
                if not available:
                    raise not_found(f"Servable not found for request: Latest({ref.name})")
                return model.records[available[-1]].servable
            record = model.records.get(version) if model else None
            if record is None or record.state != State.AVAILABLE:
                raise not_found(f"Servable not found for request: Specific({ref.name}, "
                                f"{version})")
            return record.servable

    def served_models(self) -> list[str]:
        """Names of the models with a version AVAILABLE (for a NOT_FOUND's hint)."""
        with self._lock:
            return sorted(n for n, m in self.models.items() if m.available())

    def status(self, name: str, version: int | None = None) -> list[VersionRecord]:
        """Newest first; raises NOT_FOUND like GetModelStatusImpl."""
        with self._lock:
            model = self.models.get(name)
            if model is None or not model.records:
                raise not_found(f"Could not find any versions of model {name}")
            if version is not None:
                if version not in model.records:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [model.records[version]]
            return [model.records[v] for v in sorted(model.records, reverse=True)]
