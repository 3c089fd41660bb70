"""`python -m serving`: the development model server, the model puller, the store's labels
and the client, each a module of serving/commands/, assembled here."""

from __future__ import annotations

import click

from contract.console import quiet_native_logs
from serving.commands import client, local, pull, store


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli() -> None:
    """Serve, pull and query VGG16 transfer models with TensorFlow Serving's API."""


for command in (local.local, pull.pull, pull.verify, store.label, store.promote,
                store.rollback, store.gc, client.classify, client.status, client.metadata):
    cli.add_command(command)


def _show_envvars(group: click.Group) -> None:
    """`--help` names the environment variable each option reads (containers set them)."""
    for command in group.commands.values():
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                param.show_envvar = True


def main() -> None:
    # TensorFlow's C++ info and warning lines (CPU features, missing CUDA, a decoder's
    # "Premature end of JPEG data") drown the program's own output and break its progress
    # bars; files the decoder refuses are listed in the report instead. Set before
    # TensorFlow loads; an explicit setting wins. (`python -m serving` and the console
    # script both come here.)
    quiet_native_logs()
    cli(prog_name="serving")


_show_envvars(cli)  # last: after every command is added
