"""Errors a user can cause, each with the exit code DESIGN section 6 gives it.

The CLI turns these into one line on stderr and the code; anything else keeps its traceback.
"""

EXIT_OK = 0
EXIT_NOT_PUBLISHED = 1  # the run finished but the accuracy gate was not met
EXIT_BAD_INPUT = 2  # bad usage or bad input; the message says what and where
EXIT_STORAGE = 3  # storage or network failure after retries


class UserError(Exception):
    """Base class: a problem the user can fix. `exit_code` is what the process returns."""

    exit_code = EXIT_BAD_INPUT


class InputError(UserError):
    """Bad input: a missing dataset, an unreadable weights file, an existing version..."""

    exit_code = EXIT_BAD_INPUT


class StorageError(UserError):
    """The object store or the network failed after retries (or refused our credentials)."""

    exit_code = EXIT_STORAGE


class GateNotMet(UserError):
    """Training finished but validation accuracy is below --min-val-accuracy."""

    exit_code = EXIT_NOT_PUBLISHED
