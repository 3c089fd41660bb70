"""Errors with TensorFlow Serving's status codes, and the one place they become HTTP codes.

A ServingError carries a gRPC status code (the same numbers as TF's error codes) and the
message TF Serving would send. REST answers `{"error": message}` with the HTTP status TF
Serving maps that code to (model_servers/http_server.cc); gRPC aborts with the code.
"""

from __future__ import annotations

import re

import grpc

C = grpc.StatusCode

HTTP_STATUS = {
    C.OK: 200, C.CANCELLED: 499, C.UNKNOWN: 500, C.INVALID_ARGUMENT: 400,
    C.DEADLINE_EXCEEDED: 504, C.NOT_FOUND: 404, C.ALREADY_EXISTS: 409,
    C.PERMISSION_DENIED: 403, C.RESOURCE_EXHAUSTED: 429, C.FAILED_PRECONDITION: 400,
    C.ABORTED: 409, C.OUT_OF_RANGE: 400, C.UNIMPLEMENTED: 501, C.INTERNAL: 500,
    C.UNAVAILABLE: 503, C.DATA_LOSS: 500, C.UNAUTHENTICATED: 401,
}
_BY_NUMBER = {code.value[0]: code for code in C}
GRPC_MESSAGE_LIMIT = 1024  # TF Serving truncates gRPC error messages (grpc_status_util.cc)


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def code_name(self) -> str:
        """The TF error code name, as in status JSON and metrics (`INVALID_ARGUMENT`)."""
        return self.code.name

    def grpc_details(self) -> str:
        if len(self.message) <= GRPC_MESSAGE_LIMIT:
            return self.message
        return self.message[:GRPC_MESSAGE_LIMIT] + "...TRUNCATED"


# A run that outlives its deadline (RunOptions.timeout_in_ms: the REST timeout or the gRPC
# deadline): tensorflow/core/common_runtime/direct_session.cc, WaitForNotification.
RUN_TIMED_OUT = "Timed out waiting for notification"
# Every task of a batch waited past its deadline: batching/batching_session.cc, ProcessBatch.
QUEUE_TIMED_OUT = "Run() timeout exceeded while waiting in batching queue"


def deadline_exceeded() -> ServingError:
    return ServingError(C.DEADLINE_EXCEEDED, RUN_TIMED_OUT)


def invalid_argument(message: str) -> ServingError:
    return ServingError(C.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(C.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(C.FAILED_PRECONDITION, message)


def internal(message: str) -> ServingError:
    return ServingError(C.INTERNAL, message)


def unavailable(message: str) -> ServingError:
    return ServingError(C.UNAVAILABLE, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(C.UNIMPLEMENTED, message)


# TF's Python errors wrap the runtime message in a trace of where the op was defined; TF
# Serving (C++ session) returns just the op's message. Keep that part.
_PREFIXES = (re.compile(r"^Graph execution error:\s*"),
             re.compile(r"^Detected at node .*?(?:<stack traces unavailable>|\n\n)\n?", re.S))
_SUFFIX = re.compile(r"\s*(?:\[\[\{\{node [^\]]*\}\}\]\]|\[Op:[^\]]*\]).*$", re.S)


def from_tf_error(error: Exception) -> ServingError:
    """A TensorFlow OpError (raised while running a signature) as TF Serving reports it."""
    code = _BY_NUMBER.get(getattr(error, "error_code", 2), C.UNKNOWN)
    message = getattr(error, "message", str(error))
    for prefix in _PREFIXES:
        message = prefix.sub("", message)
    message = _SUFFIX.sub("", message).strip()
    return ServingError(code, message)


class PortUnavailable(OSError):
    """A port the server was asked to listen on is taken (or not ours to bind)."""

    def __init__(self, what: str, host: str, port: int):
        flag = "--port" if what == "gRPC" else "--rest-api-port"
        super().__init__(f"{what} port {host}:{port} is already in use (or cannot be bound): "
                         f"stop what holds it or pick another with {flag}")
