"""`python -m serving`: the development model server, the model puller, the store's labels
and the client, each a module of serving/commands/, assembled here."""

from __future__ import annotations

import click

from commandline import Group
from commandline.native import quiet_native_logs
from serving.commands import client, local, pull, store


@click.group(cls=Group)
def cli() -> None:
    """Serve, pull and query VGG16 transfer models with TensorFlow Serving's API."""


for command in (local.local, pull.pull, pull.verify, store.label,
                store.rollback, store.gc, client.classify, client.status, client.metadata):
    cli.add_command(command)


def main() -> None:
    # TensorFlow's C++ info and warning lines (CPU features, missing CUDA, a decoder's
    # "Premature end of JPEG data") drown the program's own output and break its progress
    # bars; files the decoder refuses are listed in the report instead. Set before
    # TensorFlow loads; an explicit setting wins. (`python -m serving` and the console
    # script both come here.)
    quiet_native_logs()
    cli(prog_name="serving")
