"""Keep TensorFlow's native start-up noise off a command's terminal.

TensorFlow's C++ runtime prints to file descriptor 2 before its own log settings apply: the
"All log messages before absl::InitializeLog()" warning, the oneDNN and CPU-feature banners,
"Could not find cuda drivers" and the cuInit error on machines without a GPU. Python's own
output (logging, progress bars, error lines, tracebacks) goes through `sys.stderr`. So the
commands that load TensorFlow give `sys.stderr` a descriptor of its own on the same
terminal and point descriptor 2, which only native code writes to directly, at /dev/null,
unless asked to be verbose.
"""

from __future__ import annotations

import os
import sys

# TensorFlow's C++ log level for every command (`TF_CPP_MIN_LOG_LEVEL`, set before TensorFlow
# loads unless the environment sets it; the trainer image sets the same). "3" leaves only
# FATAL: the JPEG decoder logs "Premature end of JPEG data" at ERROR for a file the report
# already lists with its reason, and real failures surface as Python errors.
NATIVE_LOG_LEVEL = "3"


def quiet_native_logs() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", NATIVE_LOG_LEVEL)


def native_output(verbose: bool) -> None:
    """--verbose: TensorFlow logs everything it has; otherwise its native lines are dropped."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        silence_native_stderr()


def silence_native_stderr() -> None:
    """From now on in this process, native writes to descriptor 2 are dropped and Python's
    `sys.stderr` keeps writing where stderr went. Call before logging or progress bars are
    set up (they hold on to the stream they find). Child processes inherit /dev/null as
    their stderr, so call it only in a process that starts none whose stderr matters."""
    try:
        if sys.stderr.fileno() != 2:
            return  # stderr is redirected already (a test runner's capture, say)
    except (AttributeError, OSError, ValueError):  # no descriptor: not a terminal stream
        return
    sys.stderr.flush()
    python_side = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(python_side, "w", buffering=1, encoding=sys.stderr.encoding,
                           errors=sys.stderr.errors)
