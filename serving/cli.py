"""`python -m serving`: the development model server (and, later, puller and client)."""

from __future__ import annotations

import sys

import click

from serving import defaults


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli() -> None:
    """Serve, pull and query VGG16 transfer models with TensorFlow Serving's API."""


@cli.command()
@click.option("--model-name", envvar="MODEL_NAME", help="Name of the model to serve "
              "(ignored with --model-config-file).")
@click.option("--model-base-path", envvar="MODEL_BASE_PATH",
              help="Folder holding numbered version folders of the model (local path).")
@click.option("--port", type=int, default=defaults.GRPC_PORT, envvar="GRPC_PORT", help="gRPC port.")
@click.option("--rest-api-port", type=int, default=defaults.REST_API_PORT,
              envvar="REST_API_PORT",
              help="REST port (0 disables REST).")
@click.option("--host", default=defaults.HOST, envvar="SERVING_HOST",
              help="Address to bind (containers pass 0.0.0.0).")
@click.option("--model-config-file", type=click.Path(dir_okay=False), envvar="MODEL_CONFIG_FILE",
              help="TF Serving ModelServerConfig text proto (several models, version policy, "
                   "labels).")
@click.option("--enable-batching", is_flag=True, envvar="ENABLE_BATCHING",
              help="Merge concurrent requests into one model call.")
@click.option("--batching-parameters-file", type=click.Path(dir_okay=False),
              envvar="BATCHING_PARAMETERS_FILE",
              help="TF Serving BatchingParameters text proto (needs --enable-batching).")
@click.option("--monitoring-config-file", type=click.Path(dir_okay=False),
              envvar="MONITORING_CONFIG_FILE",
              help="TF Serving MonitoringConfig text proto (Prometheus metrics on REST).")
@click.option("--file-system-poll-wait-seconds", type=float, default=defaults.POLL_SECONDS,
              envvar="FILE_SYSTEM_POLL_WAIT_SECONDS",
              help="How often to look for new versions (0: once at start).")
@click.option("--max-request-bytes", type=int, default=defaults.MAX_REQUEST_BYTES,
              envvar="MAX_REQUEST_BYTES", help="Largest REST request body accepted (413 above).")
def local(**kwargs) -> None:
    """Run the development model server: TF Serving's REST and gRPC API, without Docker."""
    # Flag mistakes are reported before TensorFlow is imported (that takes seconds).
    if not kwargs["model_config_file"] and not (kwargs["model_name"] and
                                                kwargs["model_base_path"]):
        raise click.UsageError("give --model-name and --model-base-path, or "
                               "--model-config-file")
    if kwargs["batching_parameters_file"] and not kwargs["enable_batching"]:
        raise click.UsageError("--batching-parameters-file requires --enable-batching")
    from serving.config import ConfigError
    from serving.local import ServerOptions, serve, setup_logging

    setup_logging()
    try:
        code = serve(ServerOptions(**kwargs))
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except RuntimeError as e:  # initial load failed, as TF Serving's startup failure
        click.echo(f"error: Failed to start server. Error: UNKNOWN: {e}", err=True)
        sys.exit(1)
    sys.exit(code)


def main() -> None:
    cli(prog_name="serving")
