"""`serving local`: the development model server (serving/devserver/)."""

from __future__ import annotations

import logging
import os
import sys

import click

from commandline import Command
from contract.errors import InputError
from serving import defaults


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


@click.command(cls=Command,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
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
@click.pass_context
def local(ctx, **kwargs) -> None:
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
            raise InputError(str(PortUnavailable(what, kwargs["host"], port)))
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
        raise InputError(str(e)) from None
    from serving.devserver.config import ConfigError
    from serving.devserver.local import ServerOptions, serve

    for arg in ignored:
        logging.getLogger("serving.devserver.local").warning(
            "%s: a tensorflow_model_server flag the development server ignores", arg)
    try:
        code = serve(ServerOptions(**kwargs))
    except (ConfigError, OSError) as e:  # PortUnavailable, an unusable socket path
        raise InputError(str(e)) from None
    except ServingError as e:  # a label on a version not loaded, say
        raise InputError(f"Failed to start server. Error: {e.code_name}: {e.message}") \
            from None
    except RuntimeError as e:  # initial load failed: TF Serving's message (it exits 1)
        raise InputError(f"Failed to start server. Error: UNKNOWN: {e}") from None
    sys.exit(code)
