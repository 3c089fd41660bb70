"""The click base both command lines share (commandline): errors as one line and their exit
code, --quiet/--verbose everywhere, one log format chosen by LOG_FORMAT, env vars in --help."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from commandline import Group, is_quiet
from contract.errors import GateNotMet, StorageError
from serving.cli import cli as serving_cli
from trainer.cli import cli as trainer_cli
from trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


@pytest.mark.parametrize("cli", [trainer_cli, serving_cli], ids=["trainer", "serving"])
def test_every_command_has_quiet_verbose_and_names_its_env_vars(cli):
    found = list(commands(cli))
    assert len(found) >= 6
    for name, command in found:
        options = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
        assert {"--quiet", "-q", "--verbose"} <= options, name
        for p in command.params:
            if isinstance(p, click.Option) and p.envvar:
                assert p.show_envvar, (name, p.name)


def test_train_options_are_the_training_configuration_by_name():
    """`trainer train` builds TrainConfig from its options as they are: a new option without
    a field (or a field without an option) fails here, not in a user's run."""
    options = {p.name for p in trainer_cli.commands["train"].params} - {"no_cache", "quiet",
                                                                         "verbose"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"quiet"}
    assert options == fields


def one_command(raises: Exception | None = None) -> click.Group:
    @click.group(cls=Group)
    def cli():
        pass

    @cli.command()
    def run():
        click.echo(f"quiet={is_quiet()}")
        if raises is not None:
            raise raises
    return cli


@pytest.mark.parametrize("error, code", [(StorageError("the store said no"), 3),
                                         (GateNotMet("accuracy 0.4 below 0.9"), 4)])
def test_a_users_error_is_one_line_and_its_exit_code(error, code):
    result = CliRunner().invoke(one_command(error), ["run"])
    assert result.exit_code == code
    assert result.stderr.splitlines() == [f"error: {error}"]


def test_anything_else_keeps_its_traceback_and_exits_1():
    result = CliRunner().invoke(one_command(RuntimeError("a bug")), ["run"])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def test_real_commands_map_their_errors_the_same_way(tmp_path):
    """One from each side: bad input (2) from the trainer and from the store commands."""
    result = CliRunner().invoke(trainer_cli, ["sample-data", "--output", str(tmp_path / "d"),
                                              "--classes", "99"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: ")
    result = CliRunner().invoke(serving_cli, ["rollback", "--source", str(tmp_path / "m")])
    assert result.exit_code == 2 and result.stderr.startswith("error: no label stable")


LOGGING = """
import logging, sys
from commandline import Group
import click
@click.group(cls=Group)
def cli(): pass
@cli.command()
def run():
    logging.getLogger("demo").info("a line of the run")
    logging.getLogger("demo").warning("a warning")
cli(sys.argv[1:])
"""


def run_logging(*args, env=None):
    return subprocess.run([sys.executable, "-c", LOGGING, "run", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                                "PYTHONPATH": str(REPO),
                                                                **(env or {})})


def test_log_lines_are_json_off_a_terminal_and_text_when_asked():
    auto = run_logging()  # stderr is a pipe here, as in a container
    lines = [json.loads(line) for line in auto.stderr.splitlines()]
    assert [(x["level"], x["logger"], x["message"]) for x in lines] == [
        ("INFO", "demo", "a line of the run"), ("WARNING", "demo", "a warning")]
    assert all(x["time"].endswith("Z") for x in lines)
    text = run_logging(env={"LOG_FORMAT": "text"}).stderr.splitlines()
    assert len(text) == 2 and text[0].endswith(" INFO demo: a line of the run")
    quiet = run_logging("--quiet").stderr.splitlines()
    assert [json.loads(line)["message"] for line in quiet] == ["a warning"]


def test_a_wrong_log_format_is_one_line_and_exit_2():
    proc = run_logging(env={"LOG_FORMAT": "yaml"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: LOG_FORMAT=yaml: expected one of auto, json, "
                                        "text"]


def test_progress_bars_only_on_a_terminal():
    result = CliRunner().invoke(one_command(), ["run"])  # CliRunner's stderr: not a terminal
    assert result.stdout.strip() == "quiet=True"
