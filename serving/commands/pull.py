"""`serving pull` (the puller: init container and sidecar) and `serving verify`."""

from __future__ import annotations

import sys

import click

from commandline import Command, is_quiet, verify_key_of
from contract.errors import InputError
from contract.versions import MAX_VERSION_MIB
from serving import defaults


@click.command(cls=Command)
@click.option("--source", required=True, envvar="MODEL_SOURCE",
              help="Where the trainer publishes the model: <models uri>/<model name>, "
                   "e.g. s3://models/shapes (or a local folder).")
@click.option("--dest", required=True, envvar="MODEL_DEST",
              help="Local folder TF Serving reads, e.g. /models/shapes.")
@click.option("--watch", is_flag=True, envvar="PULL_WATCH",
              help="Keep polling for new versions (sidecar) instead of one sync.")
@click.option("--interval", type=float, default=30.0, envvar="PULL_INTERVAL",
              help="Seconds between polls with --watch or --wait-timeout.")
@click.option("--keep", type=int, default=2, envvar="PULL_KEEP",
              help="How many of the newest verified versions to keep locally.")
@click.option("--wait-timeout", type=float, default=0.0, envvar="PULL_WAIT_TIMEOUT",
              help="Without --watch: when no verified version exists yet, keep polling every "
                   "--interval seconds for up to this many seconds (a log line a minute) "
                   "instead of failing at once. 0: do not wait.")
@click.option("--verify-key", type=click.Path(dir_okay=False), default=None,
              envvar="VERIFY_KEY",
              help="PEM EC public key: install only versions whose model.sig (OpenSSF model "
                   "signing) verifies with it; unsigned versions are refused.")
@click.option("--model-config", type=click.Path(dir_okay=False), default=None,
              envvar="MODEL_CONFIG_FILE",
              help="Write the model server's models.config here (its --model_config_file, "
                   "re-read every --model_config_file_poll_wait_seconds): with labels in the "
                   "store (serving label/promote/rollback), the labelled versions and their "
                   "version_labels; without, the newest version.")
@click.option("--serve-newest", is_flag=True, envvar="SERVE_NEWEST",
              help="With labels in the store: also install and serve the newest verified "
                   "version (asked for by number or without a label).")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=0,
              envvar="PULL_METRICS_PORT",
              help="With --watch: Prometheus metrics at :PORT/metrics (syncs, installs, "
                   "rejections by kind, last successful sync, newest published and local "
                   "versions). 0: off.")
@click.option("--max-versions", type=click.IntRange(min=1), default=defaults.PULL_MAX_VERSIONS,
              envvar="PULL_MAX_VERSIONS",
              help="With labels: hold at most this many versions; every labelled one is "
                   "kept, rollback targets while there is room, newest first.")
@click.option("--max-version-mib", type=click.IntRange(min=1), default=MAX_VERSION_MIB,
              envvar="PULL_MAX_VERSION_MIB",
              help="Refuse a version whose files add up to more than this (MiB) before "
                   "downloading it; each object is also cut off past its listed size.")
def pull(source, dest, watch, interval, keep, wait_timeout, verify_key, model_config,
         serve_newest, metrics_port, max_versions, max_version_mib) -> None:
    """Bring verified model versions from object storage to a local folder.

    Without labels in the store: the newest --keep versions. With labels (_LABELS.json):
    the labelled versions, each label's previous version (so a rollback is instant) and,
    with --serve-newest, the newest one.

    Exit codes without --watch: 0 a verified version is present locally; 2 bad usage;
    3 the store cannot be reached, or holds no verified version (after --wait-timeout)."""
    from contract.errors import EXIT_OK
    from serving.puller import (
        Puller,
        run_once_status,
        wait_for_first_version,
        wait_for_interrupt,
    )

    if wait_timeout < 0 or interval <= 0:
        raise click.UsageError("--wait-timeout must be >= 0 and --interval > 0")
    puller = Puller(source, dest, keep=keep, quiet=is_quiet(),
                    verify_key=verify_key_of(verify_key), model_config=model_config,
                    serve_newest=serve_newest, max_version_mib=max_version_mib,
                    max_versions=max_versions)
    stop = wait_for_interrupt()
    if not watch:
        code, message = wait_for_first_version(puller, wait_timeout, interval, stop) \
            if wait_timeout else run_once_status(puller)
        click.echo(message if code == EXIT_OK else f"error: {message}", err=code != EXIT_OK)
        sys.exit(code)
    if metrics_port:
        from serving.puller_metrics import PullerMetrics

        puller.metrics = PullerMetrics(puller.model_name)
        try:
            puller.metrics.serve(metrics_port)
        except OSError as e:
            raise InputError(f"--metrics-port {metrics_port}: {e.strerror or e}") from None
    puller.watch(interval, stop)
    click.echo("stopped")


@click.command(cls=Command)
@click.option("--source", required=True, metavar="URI/NAME/VERSION",
              help="One published version: <models-uri>/<model-name>/<version>.")
@click.option("--verify-key", required=True, type=click.Path(dir_okay=False),
              envvar="VERIFY_KEY", help="PEM EC public key the version must be signed with.")
def verify(source, verify_key) -> None:
    """Check one published version's signature and files, as `pull --verify-key` would.

    Exit codes: 0 verified; 2 refused (the line says why: unsigned, another key, a file that
    does not match) or bad usage; 3 the store cannot be reached."""
    import tempfile
    from pathlib import Path

    from contract.manifest import MANIFEST_FILE
    from contract.names import parse_version
    from serving.puller import Puller, Rejected

    parent, _, version_text = source.rstrip("/").rpartition("/")
    version = parse_version(version_text)
    if version is None or not parent:
        raise InputError(f"--source {source}: expected <models-uri>/<model-name>/<version> "
                         "with a numeric version")
    key = verify_key_of(verify_key)
    with tempfile.TemporaryDirectory(prefix="serving-verify-") as work:
        name = parent.rsplit("/", 1)[-1]
        puller = Puller(parent, Path(work) / name, quiet=True, verify_key=key)
        stored = {e.path: e for e in puller.source.child(version_text).list_files()}
        if MANIFEST_FILE not in stored:
            raise InputError(f"{source}: no such published version (no {MANIFEST_FILE})")
        try:
            manifest = puller.read_manifest(version)
            puller.install(version, manifest, stored)
        except (Rejected, OSError, ValueError) as e:
            raise InputError(f"version {version} of {name} refused: {e}") from None
    click.echo(f"verified: version {version} of {name} ({len(manifest.files)} files) is "
               f"signed by key {key.key_id}")
