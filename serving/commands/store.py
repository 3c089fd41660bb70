"""The model's folder in the store: `serving label`, `rollback`, `gc` (`trainer promote`,
which scores versions with TensorFlow, is the trainer's)."""

from __future__ import annotations

import click

from commandline import Command, Group, verify_key_of
from contract.labels import DEFAULT_LABEL


def _show_labels(labels) -> None:
    if not labels.labels:
        click.echo(f"{labels.model_name}: no labels")
    for label, version in sorted(labels.labels.items()):
        before = labels.history.get(label)
        click.echo(f"{label}={version}" + (f"  (before: {', '.join(map(str, before))})"
                                           if before else ""))


@click.group(cls=Group)
def label() -> None:
    """Version labels in the store (<models>/<name>/_LABELS.json): set, remove, list."""


_source = click.option("--source", required=True, envvar="MODEL_SOURCE", metavar="URI/NAME",
                       help="The model's folder: <models-uri>/<model-name>.")


@label.command("set")
@_source
@click.option("--verify-key", type=click.Path(dir_okay=False), envvar="VERIFY_KEY",
              help="Also require each version to be signed with this public key.")
@click.argument("assignments", nargs=-1, required=True, metavar="LABEL=VERSION...")
def label_set(source, verify_key, assignments) -> None:
    """Point labels at published versions (each must verify), in one atomic write."""
    from contract.labels import parse_assignment
    from contract.model_folder import ModelFolder

    pairs = dict(parse_assignment(a) for a in assignments)
    _show_labels(ModelFolder(source, verify_key_of(verify_key)).set_labels(pairs))


@label.command("rm")
@_source
@click.argument("names", nargs=-1, required=True, metavar="LABEL...")
def label_rm(source, names) -> None:
    """Remove labels."""
    from contract.labels import check_label
    from contract.model_folder import ModelFolder

    _show_labels(ModelFolder(source).remove_labels([check_label(n) for n in names]))


@label.command("ls")
@_source
def label_ls(source) -> None:
    """List the labels and the versions they name."""
    from contract.model_folder import ModelFolder

    _show_labels(ModelFolder(source).labels())


@click.command(cls=Command)
@_source
@click.option("--label", "label_name", default=DEFAULT_LABEL, show_default=True,
              help="The label to move back.")
@click.option("--verify-key", type=click.Path(dir_okay=False), envvar="VERIFY_KEY",
              help="Also require the previous version to be signed with this public key.")
def rollback(source, label_name, verify_key) -> None:
    """Point a label (stable) back at the version it named before.

    Pullers keep that version installed and loaded, so serving switches back within one
    poll interval."""
    from contract.labels import check_label
    from contract.model_folder import ModelFolder

    folder = ModelFolder(source, verify_key_of(verify_key))
    old, new = folder.rollback(check_label(label_name))
    click.echo(f"rolled back: {label_name} {old} -> {new} ({folder.model_name})")


@click.command(cls=Command)
@_source
@click.option("--keep", type=int, required=True, help="Keep the newest N versions.")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
def gc(source, keep, dry_run) -> None:
    """Delete old versions from the store: all but the newest --keep and the labelled ones.

    Each goes manifest first, so it disappears for every reader at once."""
    from contract.model_folder import ModelFolder

    plan = ModelFolder(source).gc(keep, dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"kept {plan.kept} (newest {keep}), {plan.labelled} (labelled); {verb} "
               f"{plan.deleted}")
