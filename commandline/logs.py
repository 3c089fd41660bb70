"""One logging set-up for every command: JSON lines for services and containers, readable
lines for a person at a terminal.

`LOG_FORMAT` chooses, the same way for the trainer, the puller, the development server and
the store commands: `json`, `text`, or `auto` (the default): text when stderr is a
terminal, JSON otherwise (a container's log, a file, a pipe to a log collector).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from contract.errors import InputError

LOG_FORMAT_ENV = "LOG_FORMAT"
FORMATS = ("auto", "json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that narrate at INFO (TensorFlow's SavedModel writer, botocore's credential
# lookup, aiohttp's access log): the command's own lines stay readable.
NOISY = ("absl", "tensorflow", "aiohttp.access", "botocore", "boto3", "s3transfer", "urllib3")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: easy to grep, easy for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(
                     timespec="milliseconds").replace("+00:00", "Z"),
                 "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_format(stream=None) -> str:
    """"json" or "text", as LOG_FORMAT and the stream decide."""
    chosen = os.environ.get(LOG_FORMAT_ENV, "auto").strip().lower() or "auto"
    if chosen not in FORMATS:
        raise InputError(f"{LOG_FORMAT_ENV}={chosen}: expected one of {', '.join(FORMATS)}")
    if chosen != "auto":
        return chosen
    return "text" if on_terminal(stream or sys.stderr) else "json"


def on_terminal(stream) -> bool:
    """Whether `stream` is a terminal (False for a closed or unusual stream)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def setup_logging(quiet: bool = False) -> None:
    """INFO and up (WARNING and up with --quiet) to stderr, in LOG_FORMAT's format."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if log_format(handler.stream) == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
