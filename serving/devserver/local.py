"""`serving local`: the development model server, same API as tensorflow_model_server.

Startup follows TF Serving: load every configured model's first version (with warmup),
then open gRPC and REST. SIGTERM or Ctrl-C stops accepting connections, lets in-flight
requests finish, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass

from aiohttp import web
from grpc_health.v1 import health_pb2

from serving import defaults
from serving.devserver import config as cfg
from serving.devserver.batching import Batcher
from serving.devserver.errors import PortUnavailable
from serving.devserver.grpc_service import HEALTH_SERVICES, build_server
from serving.devserver.inference import Inference, replay_warmup
from serving.devserver.manager import ModelManager
from serving.devserver.metrics import Metrics
from serving.devserver.rest import RestApi

log = logging.getLogger("serving.devserver.local")
SHUTDOWN_GRACE_S = 30


@dataclass(frozen=True)
class ServerOptions:
    model_name: str | None
    model_base_path: str | None
    port: int = defaults.GRPC_PORT
    rest_api_port: int = defaults.REST_API_PORT
    host: str = defaults.HOST
    model_config_file: str | None = None
    enable_batching: bool = False
    batching_parameters_file: str | None = None
    monitoring_config_file: str | None = None
    file_system_poll_wait_seconds: float = defaults.POLL_SECONDS
    model_config_file_poll_wait_seconds: float = 0.0
    allow_version_labels_for_unavailable_models: bool = False
    rest_api_timeout_in_ms: int = defaults.REST_API_TIMEOUT_MS
    max_num_load_retries: int = defaults.MAX_NUM_LOAD_RETRIES
    load_retry_interval_micros: int = defaults.LOAD_RETRY_INTERVAL_MICROS
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    enable_grpc_healthcheck_service: bool = True
    mixed_precision: str = ""
    grpc_socket_path: str = ""
    grpc_channel_arguments: str = ""
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES


def model_configs(options: ServerOptions) -> list:
    if options.model_config_file:
        return cfg.load_models(options.model_config_file)
    if not options.model_name or not options.model_base_path:
        raise cfg.ConfigError("give --model-name and --model-base-path, or "
                              "--model-config-file")
    base = os.path.abspath(options.model_base_path.removeprefix("file://"))
    return [cfg.single_model(options.model_name, base)]


def serve(options: ServerOptions) -> int:
    """Run until SIGTERM/SIGINT. Raises ConfigError for bad configuration."""
    if options.batching_parameters_file and not options.enable_batching:
        raise cfg.ConfigError("--batching-parameters-file requires --enable-batching")
    configs = model_configs(options)
    prometheus_path = cfg.load_monitoring(options.monitoring_config_file)
    batching = cfg.load_batching(options.batching_parameters_file, os.cpu_count() or 1) \
        if options.enable_batching else None

    _session_options(options)
    metrics = Metrics(known_models={c.name for c in configs})
    warmup_inference = Inference()  # warmup runs each record directly on the new version
    manager = ModelManager(configs, options.file_system_poll_wait_seconds,
                           warmup=lambda s: replay_warmup(s, warmup_inference),
                           max_load_retries=options.max_num_load_retries,
                           load_retry_interval=options.load_retry_interval_micros / 1e6,
                           allow_unavailable_labels=(
                               options.allow_version_labels_for_unavailable_models),
                           config_file=options.model_config_file,
                           config_poll_seconds=options.model_config_file_poll_wait_seconds)
    started = time.perf_counter()
    if not _initial_load(manager):
        return 0
    log.info("initial load of %d model(s) finished in %.1f s", len(configs),
             time.perf_counter() - started)

    batcher = Batcher(batching, metrics) if batching else None
    inference = Inference(batcher)
    threads = 4 * (os.cpu_count() or 1)  # TF Serving's default for both servers
    grpc_server, health, grpc_port = build_server(
        manager, inference, metrics, options.host, options.port, threads,
        with_health=options.enable_grpc_healthcheck_service,
        max_message_bytes=options.max_request_bytes, socket_path=options.grpc_socket_path,
        channel_arguments=cfg.channel_arguments(options.grpc_channel_arguments))
    grpc_server.start()
    log.info("Running gRPC ModelServer at %s:%d ...", options.host, grpc_port)
    if options.grpc_socket_path:
        log.info("Running gRPC ModelServer at UNIX socket %s ...", options.grpc_socket_path)

    rest = None
    if options.rest_api_port and options.rest_api_port != options.port:
        rest = RestApi(manager, inference, metrics, prometheus_path, threads,
                       options.max_request_bytes, options.rest_api_timeout_in_ms)
    elif options.rest_api_port:
        log.error("--rest-api-port cannot be the same as --port; REST API not started")
    stopped, drain = [], []  # drain: when shutdown began, when REST was done

    def begin_shutdown() -> None:
        """Both servers stop accepting at once; in-flight requests get the grace period."""
        log.info("shutting down: refusing new requests, finishing in-flight ones")
        drain.append(time.monotonic())
        for service in HEALTH_SERVICES if health is not None else ():
            health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        stopped.append(grpc_server.stop(SHUTDOWN_GRACE_S))

    try:
        asyncio.run(_run_rest(rest, options.host, options.rest_api_port, begin_shutdown))
    finally:
        if not stopped:
            begin_shutdown()
        drain.append(time.monotonic())
        stopped[0].wait()
        # How long each side took to drain: a drain that uses the whole grace period says
        # which side held it (REST handlers, or gRPC calls still in flight).
        rest_s, grpc_s = drain[1] - drain[0], time.monotonic() - drain[1]
        (log.warning if rest_s + grpc_s > SHUTDOWN_GRACE_S / 3 else log.info)(
            "drained in %.1f s (REST %.1f s, then gRPC %.1f s)", rest_s + grpc_s, rest_s,
            grpc_s)
        if batcher:
            batcher.stop()
        manager.stop()
        log.info("stopped")
    return 0


class _StopRequested(Exception):
    pass


def _initial_load(manager: ModelManager) -> bool:
    """manager.start(), which may wait for a first version for as long as none appears.
    SIGTERM or Ctrl-C meanwhile stops the server as cleanly as once it serves (exit 0):
    False. Nothing is listening yet, so there is nothing to drain."""
    def stop_requested(signum, frame):
        raise _StopRequested(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop_requested) for sig in (signal.SIGTERM,
                                                                    signal.SIGINT)}
    try:
        manager.start()
        return True
    except _StopRequested as e:
        log.info("%s before any model was served: stopping", e)
        manager.stop()
        log.info("stopped")
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _session_options(options: ServerOptions) -> None:
    """Every model's session options, as TF Serving builds them (main.cc,
    saved_model_bundle_factory.cc): --tensorflow_intra_op_parallelism and
    --tensorflow_inter_op_parallelism (0: TensorFlow's defaults), and --mixed_precision:
    "bfloat16" turns on grappler's auto_mixed_precision_onednn_bfloat16 rewrite; any other
    non-empty value is a warning and float32. Set before any model loads."""
    from serving.devserver import servable

    intra = options.tensorflow_intra_op_parallelism
    inter = options.tensorflow_inter_op_parallelism
    if intra or inter:
        log.info("TensorFlow thread pools: intra-op %s, inter-op %s", intra or "default",
                 inter or "default")
    mode = options.mixed_precision
    if mode and mode != "bfloat16":
        log.warning("%s auto mixed precision is not supported. Valid option: bfloat16", mode)
    elif mode:
        log.info("Running inference with bfloat16 auto mixed precision")
    servable.SESSION_OPTIONS = servable.SessionOptions(intra, inter, mode == "bfloat16")


async def _run_rest(rest: RestApi | None, host: str, port: int, on_stop) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = None
    if rest is not None:
        runner = web.AppRunner(rest.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, shutdown_timeout=SHUTDOWN_GRACE_S)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise PortUnavailable("REST", host, port) from e
        log.info("Exporting HTTP/REST API at:%s:%d ...", host, port)
    await stop.wait()
    on_stop()
    if runner is not None:
        await runner.cleanup()  # stops listening, waits for in-flight handlers
        rest.pool.shutdown(wait=True)
