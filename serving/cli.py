"""`python -m serving`: the development model server, the model puller and the client."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import click

from contract.console import native_output, quiet_native_logs
from contract.errors import EXIT_BAD_INPUT
from contract.labels import DEFAULT_LABEL
from contract.versions import MAX_VERSION_MIB
from serving import defaults


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli() -> None:
    """Serve, pull and query VGG16 transfer models with TensorFlow Serving's API."""


def _fail_line(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _can_bind(host: str, port: int) -> bool:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _flag(name: str, *more: str, **kw):
    """An option under both spellings: `--rest-api-port` and TF Serving's `--rest_api_port`.
    Booleans also take TF Serving's `--flag=true|false`."""
    dashed = f"--{name.replace('_', '-')}"
    names = [dashed] + ([f"--{name}"] if "_" in name else [])
    if kw.pop("boolean", False):
        kw.update(type=click.BOOL, is_flag=False, flag_value=True)
    return click.option(*names, *more, name, **kw)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@_flag("model_name", help="Name of the model to serve (ignored with --model-config-file). "
       "[env var: MODEL_NAME]")
@_flag("model_base_path",
       help="Folder holding the model's numbered version folders. Without it, "
            "$MODEL_BASE_PATH/$MODEL_NAME, as in the tensorflow/serving image (there "
            "MODEL_BASE_PATH is the parent folder).")
@_flag("port", type=int, default=defaults.GRPC_PORT, envvar="GRPC_PORT", help="gRPC port.")
@_flag("rest_api_port", type=int, default=defaults.REST_API_PORT, envvar="REST_API_PORT",
       help="REST port (0 disables REST).")
@_flag("host", default=defaults.HOST, envvar="SERVING_HOST",
       help="Address to bind (containers pass 0.0.0.0).")
@_flag("model_config_file", type=click.Path(dir_okay=False), envvar="MODEL_CONFIG_FILE",
       help="TF Serving ModelServerConfig text proto (several models, version policy, "
            "labels).")
@_flag("model_config_file_poll_wait_seconds", type=float, default=0.0,
       envvar="MODEL_CONFIG_FILE_POLL_WAIT_SECONDS",
       help="Re-read --model-config-file this often and apply it, labels included (0: "
            "read once), as TF Serving.")
@_flag("allow_version_labels_for_unavailable_models", boolean=True, default=False,
       help="Let a new label name a version not loaded yet (a label in use still moves "
            "only to a loaded version), as TF Serving.")
@_flag("enable_batching", boolean=True, default=False, envvar="ENABLE_BATCHING",
       help="Merge concurrent requests into one model call.")
@_flag("batching_parameters_file", type=click.Path(dir_okay=False),
       envvar="BATCHING_PARAMETERS_FILE",
       help="TF Serving BatchingParameters text proto (needs --enable-batching).")
@_flag("monitoring_config_file", type=click.Path(dir_okay=False),
       envvar="MONITORING_CONFIG_FILE",
       help="TF Serving MonitoringConfig text proto (Prometheus metrics on REST).")
@_flag("file_system_poll_wait_seconds", type=float, default=defaults.POLL_SECONDS,
       envvar="FILE_SYSTEM_POLL_WAIT_SECONDS",
       help="How often to look for new versions (0: once at start).")
@_flag("rest_api_timeout_in_ms", type=int, default=defaults.REST_API_TIMEOUT_MS,
       envvar="REST_API_TIMEOUT_IN_MS",
       help="Run timeout of a REST request (0: none). gRPC calls use the client's deadline.")
@_flag("max_num_load_retries", type=int, default=defaults.MAX_NUM_LOAD_RETRIES,
       help="Retries of a version that fails to load, as TF Serving.")
@_flag("load_retry_interval_micros", type=int, default=defaults.LOAD_RETRY_INTERVAL_MICROS,
       help="Wait between load retries, in microseconds.")
@_flag("tensorflow_intra_op_parallelism", type=int, default=0,
       help="Threads for one op (0: TensorFlow's default).")
@_flag("tensorflow_inter_op_parallelism", type=int, default=0,
       help="Ops run in parallel (0: TensorFlow's default).")
@_flag("mixed_precision", default="", envvar="MIXED_PRECISION", metavar="bfloat16",
       help="bfloat16: run the models with grappler's oneDNN bfloat16 auto mixed precision "
            "(matrix products and convolutions in bfloat16), as TF Serving's "
            "--mixed_precision=bfloat16. Worth it on CPUs with AVX512-BF16 or AMX.")
@_flag("enable_grpc_healthcheck_service", boolean=True, default=True,
       help="The grpc.health.v1 service (on by default here; off by default in TF Serving).")
@_flag("grpc_channel_arguments", default="",
       help="gRPC server arguments, comma-separated key=value, as TF Serving's "
            "(e.g. grpc.max_connection_age_ms=300000).")
@_flag("grpc_socket_path", default="", envvar="GRPC_SOCKET_PATH",
       help="Also serve gRPC on this Unix socket, as TF Serving does (none by default).")
@_flag("max_request_bytes", type=int, default=defaults.MAX_REQUEST_BYTES,
       envvar="MAX_REQUEST_BYTES", help="Largest REST request body accepted (413 above).")
@click.option("--verbose", is_flag=True,
              help="Also show TensorFlow's native start-up and log lines.")
@click.pass_context
def local(ctx, verbose, **kwargs) -> None:
    """Run the development model server: TF Serving's REST and gRPC API, without Docker.

    Takes tensorflow_model_server's own flag spellings too (--model_name=..., --port=8500,
    --enable_batching=true, ...); its other flags are accepted and logged as ignored."""
    from serving.devserver.flags import TF_SERVING_FLAGS

    ignored = []
    for arg in ctx.args:
        flag = arg.removeprefix("--").split("=", 1)[0]
        if not arg.startswith("--") or flag not in TF_SERVING_FLAGS:
            raise click.UsageError(f"unknown option {arg!r} (neither this server's nor "
                                   "tensorflow_model_server's)")
        if flag == "version":  # tensorflow_model_server --version
            import importlib.metadata

            click.echo("TensorFlow ModelServer: serving local (the TF Serving 2.20 API)\n"
                       f"TensorFlow Library: {importlib.metadata.version('tensorflow')}")
            sys.exit(0)
        if flag == "prefer_tflite_model" and arg.partition("=")[2].lower() in ("", "true",
                                                                               "1"):
            raise click.UsageError("--prefer_tflite_model: serving local runs SavedModels "
                                   "only, not TensorFlow Lite models; leave the flag out")
        ignored.append(arg)
    if not kwargs["model_base_path"] and os.environ.get("MODEL_BASE_PATH"):
        # The tensorflow/serving image's convention: the model is $MODEL_BASE_PATH/$MODEL_NAME.
        name = kwargs["model_name"] or os.environ.get("MODEL_NAME")
        if name:
            kwargs["model_name"] = name
            kwargs["model_base_path"] = os.path.join(os.environ["MODEL_BASE_PATH"], name)
    if not kwargs["model_name"] and os.environ.get("MODEL_NAME"):
        kwargs["model_name"] = os.environ["MODEL_NAME"]
    # Flag mistakes are reported before TensorFlow is imported (that takes seconds).
    if not kwargs["model_config_file"] and not (kwargs["model_name"] and
                                                kwargs["model_base_path"]):
        raise click.UsageError("give --model-name and --model-base-path, or "
                               "--model-config-file")
    if kwargs["batching_parameters_file"] and not kwargs["enable_batching"]:
        raise click.UsageError("--batching-parameters-file requires --enable-batching")
    # The server runs SavedModels and never Keras, yet TensorFlow's import loads Keras 3
    # eagerly (tensorflow/__init__.py, "keras.src.optimizers"), and Keras imports
    # scikit-learn and matplotlib when they are installed: 2.4 of 6.4 s of every start here.
    # With TF_USE_LEGACY_KERAS, TensorFlow looks for tf_keras instead, which is not
    # installed, and skips it. An explicit setting wins.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from serving.devserver.errors import PortUnavailable, ServingError

    # A taken port is found now, in a second, not after TensorFlow and the models load.
    ports = [("gRPC", kwargs["port"])] + ([("REST", kwargs["rest_api_port"])]
                                          if kwargs["rest_api_port"] else [])
    for what, port in ports:
        if port and not _can_bind(kwargs["host"], port):
            _fail_line(str(PortUnavailable(what, kwargs["host"], port)), EXIT_BAD_INPUT)
    # The configuration files too (their parsers need no TensorFlow): a wrong one is one
    # line and exit 2 in a fraction of a second.
    from serving.devserver import config as cfg

    try:
        if kwargs["model_config_file"]:
            cfg.load_models(kwargs["model_config_file"])
        cfg.load_batching(kwargs["batching_parameters_file"], os.cpu_count() or 1)
        cfg.load_monitoring(kwargs["monitoring_config_file"])
        cfg.channel_arguments(kwargs["grpc_channel_arguments"])
    except cfg.ConfigError as e:
        _fail_line(str(e), EXIT_BAD_INPUT)
    native_output(verbose)
    from serving.devserver.config import ConfigError
    from serving.devserver.local import ServerOptions, serve
    from serving.logs import setup_logging

    setup_logging()
    for arg in ignored:
        logging.getLogger("serving.devserver.local").warning(
            "%s: a tensorflow_model_server flag the development server ignores", arg)
    try:
        code = serve(ServerOptions(**kwargs))
    except (ConfigError, OSError) as e:  # PortUnavailable, an unusable socket path
        _fail_line(str(e), EXIT_BAD_INPUT)
    except ServingError as e:  # a label on a version not loaded, say
        _fail_line(f"Failed to start server. Error: {e.code_name}: {e.message}",
                   EXIT_BAD_INPUT)
    except RuntimeError as e:  # initial load failed: TF Serving's message (it exits 1)
        _fail_line(f"Failed to start server. Error: UNKNOWN: {e}", EXIT_BAD_INPUT)
    sys.exit(code)


def _show_envvars(group: click.Group) -> None:
    """`--help` names the environment variable each option reads (containers set them)."""
    for command in group.commands.values():
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                param.show_envvar = True



def main() -> None:
    # TensorFlow's C++ info and warning lines (CPU features, missing CUDA, a decoder's
    # "Premature end of JPEG data") drown the program's own output and break its progress
    # bars; files the decoder refuses are listed in the report instead. Set before
    # TensorFlow loads; an explicit setting wins. (`python -m serving` and the console
    # script both come here.)
    quiet_native_logs()
    cli(prog_name="serving")


# ---------------------------------------------------------------------------------------
# The puller: init container (one sync) and sidecar (--watch).

@cli.command()
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
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def pull(source, dest, watch, interval, keep, wait_timeout, verify_key, model_config,
         serve_newest, metrics_port, max_versions, max_version_mib, quiet) -> None:
    """Bring verified model versions from object storage to a local folder.

    Without labels in the store: the newest --keep versions. With labels (_LABELS.json):
    the labelled versions, each label's previous version (so a rollback is instant) and,
    with --serve-newest, the newest one.

    Exit codes without --watch: 0 a verified version is present locally; 2 bad usage;
    3 the store cannot be reached, or holds no verified version (after --wait-timeout)."""
    from contract.errors import EXIT_OK, UserError
    from serving.logs import setup_logging
    from serving.puller import (
        Puller,
        run_once_status,
        wait_for_first_version,
        wait_for_interrupt,
    )

    if wait_timeout < 0 or interval <= 0:
        raise click.UsageError("--wait-timeout must be >= 0 and --interval > 0")
    setup_logging()
    try:
        puller = Puller(source, dest, keep=keep, quiet=quiet, verify_key=_verify_key(verify_key),
                        model_config=model_config, serve_newest=serve_newest,
                        max_version_mib=max_version_mib, max_versions=max_versions)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
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
            click.echo(f"error: --metrics-port {metrics_port}: {e.strerror or e}", err=True)
            sys.exit(EXIT_BAD_INPUT)
    puller.watch(interval, stop)
    click.echo("stopped")


def _verify_key(path: str | None):
    """The loaded --verify-key, or None; a bad key file fails here, before any download."""
    if path is None:
        return None
    from contract.signing import VerifyKey

    return VerifyKey.load(path)


@cli.command()
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

    from contract.errors import EXIT_OK, InputError, UserError
    from contract.manifest import MANIFEST_FILE
    from contract.names import parse_version
    from serving.puller import Puller, Rejected

    parent, _, version_text = source.rstrip("/").rpartition("/")
    version = parse_version(version_text)
    try:
        if version is None or not parent:
            raise InputError(f"--source {source}: expected <models-uri>/<model-name>/<version> "
                             "with a numeric version")
        key = _verify_key(verify_key)
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
                click.echo(f"error: version {version} of {name} refused: {e}", err=True)
                sys.exit(EXIT_BAD_INPUT)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    click.echo(f"verified: version {version} of {name} ({len(manifest.files)} files) is "
               f"signed by key {key.key_id}")
    sys.exit(EXIT_OK)


# ---------------------------------------------------------------------------------------
# The model's folder in the store: labels and retention.

def _store_command(fn):
    """Runs `fn`; a user error is one line and its exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from contract.errors import UserError
        from contract.labels import LabelsError

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        try:
            return fn(*args, **kwargs)
        except LabelsError as e:
            _fail_line(str(e), EXIT_BAD_INPUT)
        except UserError as e:
            _fail_line(str(e), e.exit_code)
    return wrapper


def _show_labels(labels) -> None:
    if not labels.labels:
        click.echo(f"{labels.model_name}: no labels")
    for label, version in sorted(labels.labels.items()):
        before = labels.history.get(label)
        click.echo(f"{label}={version}" + (f"  (before: {', '.join(map(str, before))})"
                                           if before else ""))


@cli.group()
def label() -> None:
    """Version labels in the store (<models>/<name>/_LABELS.json): set, remove, list."""


_source = click.option("--source", required=True, envvar="MODEL_SOURCE", metavar="URI/NAME",
                       help="The model's folder: <models-uri>/<model-name>.")


@label.command("set")
@_source
@click.option("--verify-key", type=click.Path(dir_okay=False), envvar="VERIFY_KEY",
              help="Also require each version to be signed with this public key.")
@click.argument("assignments", nargs=-1, required=True, metavar="LABEL=VERSION...")
@_store_command
def label_set(source, verify_key, assignments) -> None:
    """Point labels at published versions (each must verify), in one atomic write."""
    from contract.labels import parse_assignment
    from serving.store import ModelFolder

    pairs = dict(parse_assignment(a) for a in assignments)
    _show_labels(ModelFolder(source, _verify_key(verify_key)).set_labels(pairs))


@label.command("rm")
@_source
@click.argument("names", nargs=-1, required=True, metavar="LABEL...")
@_store_command
def label_rm(source, names) -> None:
    """Remove labels."""
    from contract.labels import check_label
    from serving.store import ModelFolder

    _show_labels(ModelFolder(source).remove_labels([check_label(n) for n in names]))


@label.command("ls")
@_source
@_store_command
def label_ls(source) -> None:
    """List the labels and the versions they name."""
    from serving.store import ModelFolder

    _show_labels(ModelFolder(source).labels())


@cli.command()
@_source
@click.option("--candidate", type=int, required=True, envvar="CANDIDATE_VERSION",
              help="The version to promote.")
@click.option("--data", required=True, envvar="EVAL_DATA_URI",
              help="Labelled images both versions are scored on (local or s3://), held out "
                   "of training: e.g. a test set.")
@click.option("--label", "label_name", default=DEFAULT_LABEL, show_default=True,
              help="The label to move.")
@click.option("--max-accuracy-drop", type=float, default=0.0,
              help="Refuse (exit 4) when the candidate's accuracy is more than this below "
                   "the labelled version's on --data. 0: it must be at least as good.")
@click.option("--report-dir", type=click.Path(file_okay=False), default="promotion",
              help="Where the evaluation's report goes (metrics.json, pictures).")
@click.option("--verify-key", type=click.Path(dir_okay=False), envvar="VERIFY_KEY",
              help="Also require both versions to be signed with this public key.")
@_store_command
def promote(source, candidate, data, label_name, max_accuracy_drop, report_dir,
            verify_key) -> None:
    """Move a label (stable) to a candidate version if it scores no worse on --data.

    Both versions are scored by `trainer evaluate` (their serving_default signatures, so
    it needs TensorFlow: the trainer image or the project's environment)."""
    from contract.labels import check_label
    from serving.store import ModelFolder

    if max_accuracy_drop < 0 or max_accuracy_drop > 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--max-accuracy-drop")
    folder = ModelFolder(source, _verify_key(verify_key))
    p = folder.promote(candidate, data, check_label(label_name), max_accuracy_drop,
                       report_dir)
    if not p.moved:
        click.echo(f"{label_name} is already version {candidate} of {folder.model_name}")
    elif p.before is None:
        click.echo(f"promoted: {label_name} -> {candidate} ({folder.model_name}; accuracy "
                   f"{p.figures['candidate']:.4f} on --data; no version had the label)")
    else:
        f = p.figures
        click.echo(f"promoted: {label_name} {p.before} -> {p.after} ({folder.model_name}; "
                   f"accuracy {f['candidate']:.4f} vs {f['baseline']:.4f}, difference "
                   f"{f['difference']:+.4f}, 95% CI {f['ci'][0]:+.4f} to {f['ci'][1]:+.4f}, "
                   f"{f['images']} images)")


@cli.command()
@_source
@click.option("--label", "label_name", default=DEFAULT_LABEL, show_default=True,
              help="The label to move back.")
@click.option("--verify-key", type=click.Path(dir_okay=False), envvar="VERIFY_KEY",
              help="Also require the previous version to be signed with this public key.")
@_store_command
def rollback(source, label_name, verify_key) -> None:
    """Point a label (stable) back at the version it named before.

    Pullers keep that version installed and loaded, so serving switches back within one
    poll interval."""
    from contract.labels import check_label
    from serving.store import ModelFolder

    folder = ModelFolder(source, _verify_key(verify_key))
    old, new = folder.rollback(check_label(label_name))
    click.echo(f"rolled back: {label_name} {old} -> {new} ({folder.model_name})")


@cli.command()
@_source
@click.option("--keep", type=int, required=True, help="Keep the newest N versions.")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@_store_command
def gc(source, keep, dry_run) -> None:
    """Delete old versions from the store: all but the newest --keep and the labelled ones.

    Each goes manifest first, so it disappears for every reader at once."""
    from serving.store import ModelFolder

    plan = ModelFolder(source).gc(keep, dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"kept {plan.kept} (newest {keep}), {plan.labelled} (labelled); {verb} "
               f"{plan.deleted}")


# ---------------------------------------------------------------------------------------
# The client.

def _server_options(f):
    f = click.option("--wait", "wait_s", type=float, default=0.0,
                     help="First wait up to this many seconds for the model to be AVAILABLE "
                          "(a server still starting); 0: do not wait.")(f)
    f = click.option("--verbose", is_flag=True,
                     help="Also show TensorFlow's native start-up lines.")(f)
    f = click.option("--timeout", type=float, default=30.0,
                     help="Deadline for each call, in seconds.")(f)
    f = click.option("--model-name", required=True, envvar="MODEL_NAME",
                     help="Model to query.")(f)
    f = click.option("--rest", "rest_url", metavar="URL",
                     help="REST endpoint: host:port or a URL, e.g. localhost:8501.")(f)
    f = click.option("--grpc", "grpc_target", metavar="HOST:PORT",
                     help="gRPC endpoint, e.g. localhost:8500. A dns:///host:port target "
                          "(a Kubernetes headless Service) spreads calls over every address "
                          "it resolves to.")(f)
    return f


@contextlib.contextmanager
def _connect(grpc_target, rest_url, timeout, verbose=False, model_name=None, wait_s=0.0):
    """A client of the server; with wait_s, once `model_name` is AVAILABLE there."""
    from serving.client import ClientError, connect, wait_until_available

    native_output(verbose)
    if bool(grpc_target) == bool(rest_url):
        raise click.UsageError("give exactly one of --grpc HOST:PORT or --rest URL")
    try:
        client = connect(grpc_target, rest_url, timeout)
    except ClientError as e:
        raise click.UsageError(str(e)) from e
    with client:
        if wait_s > 0:
            _client_call(lambda: wait_until_available(client, model_name, wait_s))
        yield client


def _client_call(fn):
    from serving.client import ClientError

    try:
        return fn()
    except ClientError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)


@cli.command()
@_server_options
@click.option("--version", type=int, help="Ask for this version.")
@click.option("--label", help="Ask for the version with this label.")
@click.option("--top-k", type=int, default=1, help="How many classes to show per image.")
@click.option("--batch-size", type=int, default=16, help="Images per request.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def classify(grpc_target, rest_url, model_name, timeout, verbose, wait_s, version, label,
             top_k, batch_size, as_json, images) -> None:
    """Classify image files with a served model."""
    import json

    from serving.client import classify_files

    if version is not None and label:
        raise click.UsageError("--version and --label exclude each other")
    if top_k < 1 or batch_size < 1:
        raise click.UsageError("--top-k and --batch-size must be at least 1")
    with _connect(grpc_target, rest_url, timeout, verbose, model_name, wait_s) as client:
        results = _client_call(lambda: classify_files(client, list(images), model_name,
                                                      version, label, batch_size))
    failed = [(path, p.error) for path, p in results if p.error]
    if as_json:
        for path, p in results:
            click.echo(json.dumps({"file": path, "label": p.label, "score": p.score,
                                   "top_k": p.top(top_k), "error": p.error}))
    else:
        width = max(len("file"), *(len(path) for path, _ in results))
        click.echo(f"{'file':<{width}}  {'label':<16} {'score':>6}  top-{top_k}")
        for path, p in results:
            if p.error:
                click.echo(f"{path:<{width}}  {'-':<16} {'-':>6}  error: {p.error}")
                continue
            top = ", ".join(f"{label} {score:.3f}" for label, score in p.top(top_k))
            click.echo(f"{path:<{width}}  {p.label:<16} {p.score:6.3f}  {top}")
    if failed:
        # The good images were classified and printed; the bad ones make it exit 2.
        click.echo(f"error: {len(failed)} of {len(results)} images could not be classified "
                   f"({failed[0][0]}: {failed[0][1]}" + (", ..." if len(failed) > 1 else "")
                   + ")", err=True)
        sys.exit(EXIT_BAD_INPUT)


@cli.command()
@_server_options
@click.option("--version", type=int, help="Only this version.")
def status(grpc_target, rest_url, model_name, timeout, verbose, wait_s, version) -> None:
    """Show a served model's versions and their states."""
    with _connect(grpc_target, rest_url, timeout, verbose, model_name, wait_s) as client:
        versions = _client_call(lambda: client.status(model_name, version))
    click.echo(f"{'version':>12}  {'state':<10} status")
    for v in versions:
        detail = v.error_code + (f": {v.error_message}" if v.error_message else "")
        click.echo(f"{v.version:>12}  {v.state:<10} {detail}")


@cli.command()
@_server_options
@click.option("--version", type=int, help="Ask for this version.")
@click.option("--label", help="Ask for the version with this label.")
def metadata(grpc_target, rest_url, model_name, timeout, verbose, wait_s, version,
             label) -> None:
    """Show a served model's signatures (inputs and outputs)."""
    with _connect(grpc_target, rest_url, timeout, verbose, model_name, wait_s) as client:
        info = _client_call(lambda: client.metadata(model_name, version, label))
    click.echo(f"model {model_name} version {info['version']}")
    for name, sig in info["signatures"].items():
        if name.startswith("__"):  # __saved_model_init_op: the loader's, not a request's
            continue
        click.echo(f"  {name}  {sig['method']}")
        for kind in ("inputs", "outputs"):
            for alias, desc in sig[kind].items():
                click.echo(f"    {kind[:-1]:<6} {alias}: {desc}")


_show_envvars(cli)  # last: after every command is defined
