"""The client: `serving classify`, `status`, `metadata`."""

from __future__ import annotations

import contextlib

import click

from commandline import Command
from contract.errors import InputError
from serving import defaults


def _server_options(f):
    f = click.option("--wait", "wait_s", type=float, default=0.0,
                     help="First wait up to this many seconds for the model to be AVAILABLE "
                          "(a server still starting); 0: do not wait.")(f)
    f = click.option("--timeout", type=float, default=defaults.CLIENT_TIMEOUT_S,
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
def _connect(grpc_target, rest_url, timeout, model_name=None, wait_s=0.0):
    """A client of the server; with wait_s, once `model_name` is AVAILABLE there."""
    from serving.client import ClientError, connect, wait_until_available

    if bool(grpc_target) == bool(rest_url):
        raise click.UsageError("give exactly one of --grpc HOST:PORT or --rest URL")
    try:
        client = connect(grpc_target, rest_url, timeout)
    except ClientError as e:
        raise click.UsageError(str(e)) from e
    with client:
        if wait_s > 0:
            wait_until_available(client, model_name, wait_s)
        yield client


@click.command(cls=Command)
@_server_options
@click.option("--version", type=int, help="Ask for this version.")
@click.option("--label", help="Ask for the version with this label.")
@click.option("--top-k", type=int, default=1, help="How many classes to show per image.")
@click.option("--batch-size", type=int, default=defaults.CLIENT_BATCH,
              help="Images per request.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def classify(grpc_target, rest_url, model_name, timeout, wait_s, version, label, top_k,
             batch_size, as_json, images) -> None:
    """Classify image files with a served model."""
    import json

    from serving.client import classify_files

    if version is not None and label:
        raise click.UsageError("--version and --label exclude each other")
    if top_k < 1 or batch_size < 1:
        raise click.UsageError("--top-k and --batch-size must be at least 1")
    with _connect(grpc_target, rest_url, timeout, model_name, wait_s) as client:
        results = classify_files(client, list(images), model_name, version, label,
                                 batch_size)
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
        raise InputError(f"{len(failed)} of {len(results)} images could not be classified "
                         f"({failed[0][0]}: {failed[0][1]}"
                         + (", ..." if len(failed) > 1 else "") + ")")


@click.command(cls=Command)
@_server_options
@click.option("--version", type=int, help="Only this version.")
def status(grpc_target, rest_url, model_name, timeout, wait_s, version) -> None:
    """Show a served model's versions and their states."""
    with _connect(grpc_target, rest_url, timeout, model_name, wait_s) as client:
        versions = client.status(model_name, version)
    click.echo(f"{'version':>12}  {'state':<10} status")
    for v in versions:
        detail = v.error_code + (f": {v.error_message}" if v.error_message else "")
        click.echo(f"{v.version:>12}  {v.state:<10} {detail}")


@click.command(cls=Command)
@_server_options
@click.option("--version", type=int, help="Ask for this version.")
@click.option("--label", help="Ask for the version with this label.")
def metadata(grpc_target, rest_url, model_name, timeout, wait_s, version, label) -> None:
    """Show a served model's signatures (inputs and outputs)."""
    with _connect(grpc_target, rest_url, timeout, model_name, wait_s) as client:
        info = client.metadata(model_name, version, label)
    click.echo(f"model {model_name} version {info['version']}")
    for name, sig in info["signatures"].items():
        if name.startswith("__"):  # __saved_model_init_op: the loader's, not a request's
            continue
        click.echo(f"  {name}  {sig['method']}")
        for kind in ("inputs", "outputs"):
            for alias, desc in sig[kind].items():
                click.echo(f"    {kind[:-1]:<6} {alias}: {desc}")
