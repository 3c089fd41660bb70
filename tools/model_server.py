"""Start and stop `python -m serving local` as a real process (tests and `make demo`)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tools.seaweed import free_port, with_parent

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LocalServer:
    """One development server on free loopback ports. `args` are extra CLI arguments."""

    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    grpc_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self, wait_for_model: str | None = None, timeout: float = 180) -> LocalServer:
        for attempt in range(3):
            cmd = [sys.executable, "-m", "serving", "local", "--port", str(self.grpc_port),
                   "--rest-api-port", str(self.rest_port), *self.args]
            log = self.log_path.open("ab")
            self.process = subprocess.Popen(with_parent(cmd), stdout=log, stderr=subprocess.STDOUT,
                                            cwd=REPO, env={**os.environ,
                                                           "TF_CPP_MIN_LOG_LEVEL": "2",
                                                           **self.env})
            log.close()
            if not wait_for_model:
                return self
            try:
                self.wait_available(wait_for_model, timeout)
                return self
            except RuntimeError:
                # A free port can be taken between choosing it and the server binding it
                # (another process's connection, a parallel test): choose again.
                if attempt == 2 or "is already in use" not in self.log_text():
                    raise
                self.grpc_port, self.rest_port = free_port(), free_port()
        return self

    def wait_available(self, model: str, timeout: float = 180) -> dict:
        """Ports open only after the initial load, so a 200 status means serving."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serving local exited with {self.process.returncode}:\n"
                                   f"{self.log_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.rest_url}/v1/models/{model}",
                                            timeout=5) as response:
                    status = json.loads(response.read())
                if any(v["state"] == "AVAILABLE" for v in status["model_version_status"]):
                    return status
            except (urllib.error.URLError, ConnectionError, TimeoutError,
                    http.client.HTTPException, ValueError, KeyError):
                # Not up yet, or another process answers on the port (a free port taken
                # between choosing and binding, by another server's gRPC say): this one then
                # exits with "already in use", and start() chooses again.
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {model} not AVAILABLE after {timeout}s:\n"
                                   f"{self.log_text()[-4000:]}")
            time.sleep(0.3)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then wait; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
