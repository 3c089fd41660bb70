"""TF Serving's REST API (port 8501) on aiohttp.

URL grammar, status codes and bodies follow model_servers/http_rest_api_handler.cc and
http_rest_api_util.cc: every path under `/v1/` goes to the API handler and errors are
`{"error": "..."}` with TF Serving's HTTP code; any other path is a plain 404 (libevent's),
except the Prometheus path when monitoring is on. Model work runs in a thread pool so the
event loop keeps accepting connections.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import grpc
from aiohttp import web
from google.protobuf import json_format

from serving import defaults
from serving.defaults import SERVED_MODELS_KEY, is_loopback
from serving.devserver import rest_json
from serving.devserver.errors import ServingError, invalid_argument
from serving.devserver.inference import (
    Inference,
    ModelRef,
    classify_signature,
    predict_signature,
    regress_signature,
)
from serving.devserver.manager import ModelManager
from serving.devserver.metrics import Metrics
from serving.devserver.status import status_response

log = logging.getLogger(__name__)

_POST = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                   r":(classify|regress|predict)", re.I)
_GET = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                  r"(?:/(metadata))?", re.I)
_API = re.compile(r"/v1/.*", re.I)
JSON = "application/json"
LIBEVENT_404 = ("<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
                "</BODY></HTML>\n")


def _converted(convert):
    """A request body's values as tensors. JSON nested deeper than any tensor can be (TF's
    TensorShape holds at most 254 dimensions) is the request's fault: 400, not a 500 from
    Python's recursion limit or NumPy's 64 dimensions."""
    try:
        return convert()
    except (RecursionError, ValueError) as e:
        raise invalid_argument(f"Malformed request: the JSON values nest deeper than a tensor "
                               f"can ({type(e).__name__})") from e


def _version(text: str | None) -> int | None:
    if not text:
        return None
    # TF Serving parses into an int64 (model_servers/http_rest_api_util.cc); Python's int()
    # refuses strings of more than 4300 digits with a ValueError, which answered 500.
    value = int(text) if len(text) <= 19 else 2**63
    if value > 2**63 - 1:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return value


class RestApi:
    def __init__(self, manager: ModelManager, inference: Inference, metrics: Metrics,
                 prometheus_path: str | None, threads: int,
                 max_body_bytes: int = defaults.MAX_REQUEST_BYTES,
                 timeout_ms: int = defaults.REST_API_TIMEOUT_MS):
        self.manager = manager
        self.inference = inference
        self.metrics = metrics
        self.prometheus_path = prometheus_path
        self.max_body_bytes = max_body_bytes
        # --rest_api_timeout_in_ms: each REST call's run timeout (0: none), 504 on expiry.
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="rest")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        path = request.raw_path.split("?", 1)[0]
        if self.prometheus_path and path == self.prometheus_path and request.method == "GET":
            return web.Response(text=self.metrics.render(), content_type="text/plain")
        if not _API.fullmatch(path):
            return web.Response(status=404, text=LIBEVENT_404, content_type="text/html")
        if request.method == "OPTIONS":
            return self._preflight(request)
        started = time.perf_counter()
        model, api = "", ""
        try:
            call, ref, api = self._route(request.method, path)
            model = ref.name
            body = await request.read() if request.method == "POST" else b""
            text = await asyncio.get_running_loop().run_in_executor(
                self.pool, call, ref, body)
        except web.HTTPRequestEntityTooLarge:
            error = ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Request body larger "
                                 f"than the server's limit of {self.max_body_bytes} bytes")
            self.metrics.request_count_only(model, error.code_name)
            return self._error(error, status=413)
        except ServingError as e:
            self.metrics.request_count_only(model, e.code_name)
            response = self._error(e)
            if e.code == grpc.StatusCode.NOT_FOUND and is_loopback(request.remote):
                response.headers[SERVED_MODELS_KEY] = ",".join(self.manager.served_models())
            return response
        except Exception as e:  # a bug: keep the server up, answer like TF Serving's INTERNAL
            log.exception("unexpected error handling %s %s", request.method, path)
            self.metrics.request_count_only(model, "INTERNAL")
            return self._error(ServingError(grpc.StatusCode.INTERNAL, str(e)))
        # As TF Serving's HTTP server (model_servers/http_server.cc, ProcessRequest): every
        # request that reaches the API handler is counted, status GETs included; latency is
        # recorded only for a 200, under the REST verb ("" for GETs).
        self.metrics.request(model, api, "REST", "OK", time.perf_counter() - started)
        return web.Response(text=text, content_type=JSON)

    def _route(self, method: str, path: str):
        """(function, model reference, API verb for metrics) for a request path.

        The path grammar is case-insensitive, but the verb is dispatched exactly, as in TF
        Serving (http_rest_api_util.cc, http_rest_api_handler.cc): `:PREDICT` matches the
        path and then falls through to "Malformed request", a 400.
        """
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST" and (m := _POST.fullmatch(path)):
            name, version, label, verb = m.groups()
            call = {"predict": self._predict, "classify": self._classify,
                    "regress": self._regress}.get(verb)
            if call is None:
                raise malformed
            return call, self._ref(name, version, label), verb
        if method == "GET" and (m := _GET.fullmatch(path)):
            name, version, label, metadata = m.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            call = self._metadata if metadata else self._status
            return call, self._ref(name, version, label), ""
        raise malformed

    @staticmethod
    def _ref(name: str, version: str | None, label: str | None) -> ModelRef:
        return ModelRef(unquote(name), _version(version), unquote(label) if label else None)

    @staticmethod
    def _error(error: ServingError, status: int | None = None) -> web.Response:
        return web.Response(status=status or error.http_status,
                            text=rest_json.error_body(error.message), content_type=JSON)

    @staticmethod
    def _preflight(request: web.Request) -> web.Response:
        origin = request.headers.get("Origin", "")
        if not re.match(r"https?://", origin):
            return RestApi._error(invalid_argument("Origin header is missing in CORS "
                                                   "preflight"))
        return web.Response(status=200, headers={
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": "POST, GET",
            "Access-Control-Allow-Headers": "Content-Type"})

    # -- the API calls (run in the pool) --------------------------------------------------
    def _predict(self, ref: ModelRef, body: bytes) -> str:
        doc = rest_json.parse_json(body)  # parsed before the model is looked up, as TF Serving
        signature_name = rest_json.signature_name(doc)
        servable = self.manager.lookup(ref)
        signature = predict_signature(servable, signature_name, rest=True)
        inputs, fmt = _converted(lambda: rest_json.predict_inputs(doc, signature.inputs))
        outputs = self.inference.predict(servable, signature, inputs, timeout=self.timeout)
        return rest_json.predict_response(outputs, fmt)

    def _classify(self, ref: ModelRef, body: bytes) -> str:
        doc = rest_json.parse_json(body)
        signature_name = rest_json.signature_name(doc)
        examples = _converted(lambda: rest_json.classify_examples(doc))
        servable = self.manager.lookup(ref)
        signature = classify_signature(servable, signature_name)
        return rest_json.classify_response(
            self.inference.classify(servable, signature, examples, timeout=self.timeout))

    def _regress(self, ref: ModelRef, body: bytes) -> str:
        doc = rest_json.parse_json(body)
        signature_name = rest_json.signature_name(doc)
        examples = _converted(lambda: rest_json.classify_examples(doc))  # the same request
        servable = self.manager.lookup(ref)
        signature = regress_signature(servable, signature_name)
        return rest_json.regress_response(
            self.inference.regress(servable, signature, examples, timeout=self.timeout))

    def _status(self, ref: ModelRef, _body: bytes = b"") -> str:
        # A label is not resolved for status: all versions are returned (TF Serving does so).
        response = status_response(self.manager, ref.name, ref.version)
        return json_format.MessageToJson(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True,
                                         indent=1) + "\n"

    def _metadata(self, ref: ModelRef, _body: bytes = b"") -> str:
        servable = self.manager.lookup(ref)
        signature_def = json_format.MessageToDict(servable.signature_def_map(),
                                                  preserving_proto_field_name=True,
                                                  always_print_fields_with_no_presence=True)
        body = {
            "model_spec": {"name": ref.name, "signature_name": "",
                           "version": str(servable.version)},
            "metadata": {"signature_def": signature_def},
        }
        return rest_json.dumps(body, indent=1) + "\n"

