"""What every command of `trainer` and `serving` shares: one click base.

- `--quiet/-q` (warnings and errors only) and `--verbose` (TensorFlow's native start-up and
  log lines too) on every command; progress bars only on a terminal, and not with --quiet
  (a container's log gets the log lines, not bars redrawn);
- one logging set-up (commandline.logs: JSON lines or readable text, chosen by LOG_FORMAT);
- a user's error (contract.errors.UserError) as one `error: ...` line on stderr and the exit
  code DESIGN section 6 gives it; anything else keeps its traceback and exits 1;
- `--help` names the environment variable each option reads (containers set them).

A group made with `cls=Group` makes every command under it a `Command`; a command made on
its own (to be added to a group elsewhere) takes `cls=Command`.
"""

from __future__ import annotations

import sys

import click

from commandline.logs import on_terminal, setup_logging
from commandline.native import native_output
from contract.errors import UserError

_QUIET = "commandline.quiet"
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True,
                    "max_content_width": 100}


class Command(click.Command):
    """A command with --quiet/--verbose, the shared logging and errors as exit codes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.params += [
            click.Option(["--quiet", "-q"], is_flag=True,
                         help="Warnings and errors only: no progress bars or per-step lines "
                              "(bars show only on a terminal anyway)."),
            click.Option(["--verbose"], is_flag=True,
                         help="Also show TensorFlow's native start-up and log lines."),
        ]
        for param in self.params:
            if isinstance(param, click.Option) and param.envvar:
                param.show_envvar = True

    def invoke(self, ctx: click.Context):
        quiet = ctx.params.pop("quiet", False)
        verbose = ctx.params.pop("verbose", False)
        ctx.meta[_QUIET] = quiet
        try:
            # Native output first: logging holds on to the stderr stream it finds.
            native_output(verbose)
            setup_logging(quiet)
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


class Group(click.Group):
    """A group whose commands (and sub-groups) are this module's."""

    command_class = Command
    group_class = type

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)


def is_quiet() -> bool:
    """True when the running command shows no progress bars: --quiet, or stderr is not a
    terminal. (Modules take this as their `quiet`; log lines follow --quiet alone.)"""
    return click.get_current_context().meta.get(_QUIET, False) or not on_terminal(sys.stderr)


def verify_key_of(path: str | None):
    """The loaded --verify-key, or None; a bad key file fails here, before any download."""
    if path is None:
        return None
    from contract.signing import VerifyKey

    return VerifyKey.load(path)
