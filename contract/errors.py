"""Errors a user can cause, each with the exit code DESIGN section 6 gives it.

The CLI turns these into one line on stderr and the code; anything else keeps its traceback
and exits 1, so `podFailurePolicy` can fail a Job at once on 2 and 4 and retry 1 and 3.
"""

EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug or a crash: Python's own exit code for an uncaught exception
EXIT_BAD_INPUT = 2  # bad usage or bad input; the message says what and where
EXIT_STORAGE = 3  # storage, network or environment failure after retries (e.g. no GPU)
EXIT_NOT_GOOD_ENOUGH = 4  # the run finished but its model is not good enough: nothing published


class UserError(Exception):
    """Base class: a problem the user can fix. `exit_code` is what the process returns."""

    exit_code = EXIT_BAD_INPUT


class InputError(UserError):
    """Bad input: a missing dataset, an unreadable weights file, an existing version..."""

    exit_code = EXIT_BAD_INPUT


class StorageError(UserError):
    """The object store or the network failed after retries (or refused our credentials)."""

    exit_code = EXIT_STORAGE


class EnvironmentFailure(UserError):
    """The machine lacks what the run requires (a GPU TensorFlow can see, say)."""

    exit_code = EXIT_STORAGE


class GateNotMet(UserError):
    """Training finished but validation accuracy is below --min-val-accuracy."""

    exit_code = EXIT_NOT_GOOD_ENOUGH
