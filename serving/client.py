"""Client for this project's models behind TensorFlow Serving or `serving local`.

Expects a model server exposing TF Serving's API (gRPC on 8500, REST on 8501) with the
signatures the trainer exports: `serving_default` takes encoded image bytes (`image_bytes`)
and returns `label`, `score`, `classes`, `scores`. Both transports work against the real
`tensorflow/serving` and the development server alike:

    from serving.client import connect
    with connect(grpc_target="localhost:8500") as client:     # or rest_url="http://..."
        [p] = client.classify([open("cat.jpg", "rb").read()], model="shapes")
        print(p.label, p.score, p.top(2))

Every call has a deadline; failures raise ClientError with one line and an exit code
(2: the server refused the request, 3: unreachable, unavailable, timed out or failing).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from contract.errors import EXIT_BAD_INPUT, EXIT_STORAGE, UserError
from contract.image_formats import ERROR_NOT_AN_IMAGE, sniff
from contract.names import ERROR_OUTPUT, IMAGE_BYTES_INPUT, SERVING_DEFAULT
from serving import defaults, protos
from serving.defaults import SERVED_MODELS_KEY

DEFAULT_TIMEOUT_S = defaults.CLIENT_TIMEOUT_S
# gRPC targets with an explicit resolver scheme may name many servers (a Kubernetes headless
# Service: dns:///serving-grpc.<namespace>:8500). Their calls are spread over every address
# (round_robin) instead of gRPC's default pick_first, which sends every call of a channel to
# one pod, so scaling out would not help a long-lived client.
BALANCED_SCHEMES = ("dns:", "ipv4:", "ipv6:")
DEFAULT_BATCH = defaults.CLIENT_BATCH


class ClientError(UserError):
    """A call that failed: one line, and exit 2 (the server refused it) or 3 (unreachable)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Prediction:
    label: str
    score: float
    classes: list[str]
    scores: list[float]
    error: str = ""  # why the image could not be classified ("" when it was)

    def top(self, k: int) -> list[tuple[str, float]]:
        if self.error:
            return []
        ranked = sorted(zip(self.classes, self.scores, strict=True), key=lambda x: -x[1])
        return ranked[:k]

    @classmethod
    def failed(cls, error: str) -> Prediction:
        return cls("", 0.0, [], [], error)


@dataclass
class VersionInfo:
    version: int
    state: str
    error_code: str
    error_message: str


_BAD_REQUEST = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED", "UNIMPLEMENTED"}
_UNREACHABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"}




def _served(models: str | None) -> str:
    if models is None:
        return ""
    return f" (this server serves: {models.replace(',', ', ') or 'no model yet'})"


def _error(code: str, message: str, where: str) -> ClientError:
    if code in _UNREACHABLE:
        return ClientError(f"model server at {where} unavailable ({code}): {message}",
                           EXIT_STORAGE)
    if code in _BAD_REQUEST:
        return ClientError(f"{code}: {message}", EXIT_BAD_INPUT)
    # The server failed (INTERNAL, UNKNOWN...): not this process's bug, so not exit 1.
    return ClientError(f"server error {code}: {message}", EXIT_STORAGE)


class GrpcClient:
    """TF Serving's gRPC API. The messages come from serving.protos, declared without
    TensorFlow, so a command that only sends a request starts in about a second."""

    def __init__(self, target: str, timeout: float = DEFAULT_TIMEOUT_S):
        import grpc

        self.target, self.timeout = target, timeout
        self._grpc = grpc
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if target.startswith(BALANCED_SCHEMES):
            options.append(("grpc.lb_policy_name", "round_robin"))
        self.options = options
        self.channel = grpc.insecure_channel(target, options=options)

    def _call(self, method: tuple, request):
        path, request_class, response_class = method
        call = self.channel.unary_unary(path, request_serializer=request_class.SerializeToString,
                                        response_deserializer=response_class.FromString)
        try:
            return call(request, timeout=self.timeout)
        except self._grpc.RpcError as e:
            hint = ""
            if e.code() == self._grpc.StatusCode.NOT_FOUND:
                trailers = dict(e.trailing_metadata() or ())
                hint = _served(trailers.get(SERVED_MODELS_KEY))
            raise _error(e.code().name, (e.details() or "") + hint, self.target) from e

    @staticmethod
    def _spec(spec, model: str, version: int | None, label: str | None) -> None:
        spec.name = model
        if version is not None:
            spec.version.value = version
        elif label:
            spec.version_label = label

    def classify(self, images: list[bytes], model: str, version: int | None = None,
                 label: str | None = None) -> list[Prediction]:
        request = protos.PredictRequest()
        self._spec(request.model_spec, model, version, label)
        request.model_spec.signature_name = SERVING_DEFAULT
        protos.strings_tensor(images, request.inputs[IMAGE_BYTES_INPUT])
        response = self._call(protos.PREDICT, request)
        out = {k: protos.to_ndarray(v) for k, v in response.outputs.items()}
        errors = out.get(ERROR_OUTPUT, [b""] * len(images))  # models exported before it had none
        return [Prediction(out["label"][i].decode(), float(out["score"][i]),
                           [c.decode() for c in out["classes"][i]],
                           [float(s) for s in out["scores"][i]], errors[i].decode())
                for i in range(len(images))]

    def status(self, model: str, version: int | None = None) -> list[VersionInfo]:
        request = protos.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, None)
        response = self._call(protos.GET_MODEL_STATUS, request)
        return [VersionInfo(v.version, protos.STATES.get(v.state, str(v.state)),
                            protos.ERROR_CODES[v.status.error_code]
                            if v.status.error_code < len(protos.ERROR_CODES)
                            else str(v.status.error_code),
                            v.status.error_message) for v in response.model_version_status]

    def metadata(self, model: str, version: int | None = None,
                 label: str | None = None) -> dict:
        from google.protobuf import json_format

        request = protos.GetModelMetadataRequest()
        self._spec(request.model_spec, model, version, label)
        request.metadata_field.append("signature_def")
        response = self._call(protos.GET_MODEL_METADATA, request)
        sigmap = protos.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigmap)
        signature_def = json_format.MessageToDict(sigmap, preserving_proto_field_name=True)
        return {"version": response.model_spec.version.value,
                "signatures": _signatures(signature_def)}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RestClient:
    """TF Serving's REST API (JSON, images as {"b64": ...})."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_S):
        import requests

        self.url, self.timeout = url.rstrip("/"), timeout
        self._requests = requests
        self.session = requests.Session()

    def _path(self, model: str, version: int | None, label: str | None) -> str:
        path = f"{self.url}/v1/models/{model}"
        if version is not None:
            return f"{path}/versions/{version}"
        return f"{path}/labels/{label}" if label else path

    def _call(self, method: str, url: str, body: dict | None = None) -> dict:
        requests = self._requests
        try:
            response = self.session.request(method, url, json=body, timeout=self.timeout)
        except requests.Timeout as e:
            raise ClientError(f"model server at {self.url} did not answer within "
                              f"{self.timeout:g} s", 3) from e
        except requests.ConnectionError as e:
            raise ClientError(f"model server at {self.url} unreachable ({_reason(e)}): is it "
                              "running, and is this its REST port (8501 by default; 8500 is "
                              "gRPC)?", 3) from e
        except requests.RequestException as e:
            raise ClientError(f"model server at {self.url} unreachable: "
                              f"{type(e).__name__}: {e}", 3) from e
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text.strip()[:200]}
        if response.status_code != 200:
            code = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED",
                    501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(
                response.status_code, f"HTTP {response.status_code}")
            message = str(payload.get("error", payload)) if isinstance(payload, dict) \
                else str(payload)
            if response.status_code == 404:
                message += _served(response.headers.get(SERVED_MODELS_KEY))
            raise _error(code, f"{message} (HTTP {response.status_code})", self.url)
        return payload

    def classify(self, images: list[bytes], model: str, version: int | None = None,
                 label: str | None = None) -> list[Prediction]:
        body = {"signature_name": SERVING_DEFAULT,
                "instances": [{"b64": base64.b64encode(i).decode()} for i in images]}
        payload = self._call("POST", f"{self._path(model, version, label)}:predict", body)
        return [Prediction(p["label"], float(p["score"]), p["classes"],
                           [float(s) for s in p["scores"]], p.get(ERROR_OUTPUT, ""))
                for p in payload["predictions"]]

    def status(self, model: str, version: int | None = None) -> list[VersionInfo]:
        payload = self._call("GET", self._path(model, version, None))
        return [VersionInfo(int(v["version"]), v["state"], v["status"]["error_code"],
                            v["status"]["error_message"])
                for v in payload["model_version_status"]]

    def metadata(self, model: str, version: int | None = None,
                 label: str | None = None) -> dict:
        payload = self._call("GET", f"{self._path(model, version, label)}/metadata")
        return {"version": int(payload["model_spec"]["version"]),
                "signatures": _signatures(payload["metadata"]["signature_def"])}

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _signatures(signature_def: dict) -> dict:
    """{name: {"method": ..., "inputs": {alias: "DT_X [d0,d1]"}, "outputs": {...}}}."""
    def describe(info: dict) -> str:
        shape = info.get("tensor_shape", {})
        dims = "?" if shape.get("unknown_rank") else ",".join(
            str(d.get("size", "?")) for d in shape.get("dim", []))
        return f"{info.get('dtype', 'DT_INVALID')} [{dims}]"

    return {name: {"method": sig.get("method_name", ""),
                   "inputs": {k: describe(v) for k, v in sig.get("inputs", {}).items()},
                   "outputs": {k: describe(v) for k, v in sig.get("outputs", {}).items()}}
            for name, sig in sorted(signature_def.get("signature_def", {}).items())}


def rest_base_url(url: str) -> str:
    """`host:port` as for gRPC, or an http(s) URL; anything else is a usage error."""
    if "://" not in url:
        return f"http://{url}"
    if not url.startswith(("http://", "https://")):
        raise ClientError(f"--rest {url}: expected host:port or http(s)://host:port",
                          EXIT_BAD_INPUT)
    return url


def connect(grpc_target: str | None = None, rest_url: str | None = None,
            timeout: float = DEFAULT_TIMEOUT_S):
    if bool(grpc_target) == bool(rest_url):
        raise ClientError("give exactly one of a gRPC target or a REST URL", EXIT_BAD_INPUT)
    if grpc_target:
        return GrpcClient(grpc_target, timeout)
    return RestClient(rest_base_url(rest_url), timeout)


def wait_until_available(client, model: str, timeout: float, every: float = 0.5) -> None:
    """Poll the model's status until a version is AVAILABLE (a server that is still starting
    or loading counts as not yet); ClientError (exit 3) when `timeout` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            if any(v.state == "AVAILABLE" for v in client.status(model)):
                return
            reason = "no version AVAILABLE yet"
        except ClientError as e:
            reason = str(e)
        if time.monotonic() > deadline:
            raise ClientError(f"model {model} not available after {timeout:.0f} s ({reason})",
                              EXIT_STORAGE)
        time.sleep(every)


def read_images(paths: list[str]) -> list[bytes]:
    images = []
    for path in paths:
        try:
            images.append(Path(path).read_bytes())
        except OSError as e:
            raise ClientError(f"cannot read image file {path}: {e.strerror}",
                              EXIT_BAD_INPUT) from e
    return images


def classify_files(client, paths: list[str], model: str, version: int | None = None,
                   label: str | None = None, batch: int = DEFAULT_BATCH
                   ) -> list[tuple[str, Prediction]]:
    """Classify files in batches of `batch` images per request, in the order given.

    A file that is not a JPEG/PNG/GIF/BMP image by its first bytes is not sent: it gets its
    reason at once, as the server would give it. Anything else bad (a truncated file) is
    reported by the server, per image, in `Prediction.error`.
    """
    images = read_images(paths)
    results: dict[int, Prediction] = {}
    sendable = []
    for i, data in enumerate(images):
        if sniff(data) is None:
            results[i] = Prediction.failed(ERROR_NOT_AN_IMAGE)
        else:
            sendable.append(i)
    for start in range(0, len(sendable), batch):
        chunk = sendable[start:start + batch]
        predictions = client.classify([images[i] for i in chunk], model, version, label)
        results.update(zip(chunk, predictions, strict=True))
    return [(paths[i], results[i]) for i in range(len(paths))]


def _reason(error: BaseException) -> str:
    """The innermost cause of a requests ConnectionError, in a few words: "Connection
    refused", "Remote end closed connection without response" (an HTTP/2-only port)."""
    seen = error
    while True:
        inner = getattr(seen, "reason", None) or (seen.args[0] if seen.args and
                                                    isinstance(seen.args[0], BaseException)
                                                    else None) or seen.__cause__
        if not isinstance(inner, BaseException) or inner is seen:
            break
        seen = inner
    text = str(seen.args[-1] if seen.args else seen)
    if not text.isprintable() or type(seen).__name__ == "BadStatusLine":
        return "the port answers, but not in HTTP/1.1: a gRPC port?"
    return text.split(": ", 1)[-1] if "object at 0x" in text else text
