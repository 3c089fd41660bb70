"""The model's folder in the store: `serving label`, `promote`, `rollback`, `gc`."""

from __future__ import annotations

import logging

import click

from contract.errors import EXIT_BAD_INPUT
from contract.labels import DEFAULT_LABEL
from serving.commands.common import fail_line as _fail_line
from serving.commands.common import verify_key_of as _verify_key


def _store_command(fn):
    """Runs `fn`; a user error is one line and its exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from contract.errors import UserError
        from contract.labels import LabelsError

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        try:
            return fn(*args, **kwargs)
        except LabelsError as e:
            _fail_line(str(e), EXIT_BAD_INPUT)
        except UserError as e:
            _fail_line(str(e), e.exit_code)
    return wrapper


def _show_labels(labels) -> None:
    if not labels.labels:
        click.echo(f"{labels.model_name}: no labels")
    for label, version in sorted(labels.labels.items()):
        before = labels.history.get(label)
        click.echo(f"{label}={version}" + (f"  (before: {', '.join(map(str, before))})"
                                           if before else ""))


@click.group()
def label() -> None:
    """Version labels in the store (<models>/<name>/_LABELS.json): set, remove, list."""


_source = click.option("--source", required=True, envvar="MODEL_SOURCE", metavar="URI/NAME",
                       help="The model's folder: <models-uri>/<model-name>.")


@label.command("set")
@_source
@click.option("--verify-key", type=click.Path(dir_okay=False), envvar="VERIFY_KEY",
              help="Also require each version to be signed with this public key.")
@click.argument("assignments", nargs=-1, required=True, metavar="LABEL=VERSION...")
@_store_command
def label_set(source, verify_key, assignments) -> None:
    """Point labels at published versions (each must verify), in one atomic write."""
    from contract.labels import parse_assignment
    from serving.store import ModelFolder

    pairs = dict(parse_assignment(a) for a in assignments)
    _show_labels(ModelFolder(source, _verify_key(verify_key)).set_labels(pairs))


@label.command("rm")
@_source
@click.argument("names", nargs=-1, required=True, metavar="LABEL...")
@_store_command
def label_rm(source, names) -> None:
    """Remove labels."""
    from contract.labels import check_label
    from serving.store import ModelFolder

    _show_labels(ModelFolder(source).remove_labels([check_label(n) for n in names]))


@label.command("ls")
@_source
@_store_command
def label_ls(source) -> None:
    """List the labels and the versions they name."""
    from serving.store import ModelFolder

    _show_labels(ModelFolder(source).labels())


@click.command()
@_source
@click.option("--candidate", type=int, required=True, envvar="CANDIDATE_VERSION",
              help="The version to promote.")
@click.option("--data", required=True, envvar="EVAL_DATA_URI",
              help="Labelled images both versions are scored on (local or s3://), held out "
                   "of training: e.g. a test set.")
@click.option("--label", "label_name", default=DEFAULT_LABEL, show_default=True,
              help="The label to move.")
@click.option("--max-accuracy-drop", type=float, default=0.0,
              help="Refuse (exit 4) when the candidate's accuracy is more than this below "
                   "the labelled version's on --data. 0: it must be at least as good.")
@click.option("--report-dir", type=click.Path(file_okay=False), default="promotion",
              help="Where the evaluation's report goes (metrics.json, pictures).")
@click.option("--verify-key", type=click.Path(dir_okay=False), envvar="VERIFY_KEY",
              help="Also require both versions to be signed with this public key.")
@_store_command
def promote(source, candidate, data, label_name, max_accuracy_drop, report_dir,
            verify_key) -> None:
    """Move a label (stable) to a candidate version if it scores no worse on --data.

    Both versions are scored by `trainer evaluate` (their serving_default signatures, so
    it needs TensorFlow: the trainer image or the project's environment)."""
    from contract.labels import check_label
    from serving.store import ModelFolder

    if max_accuracy_drop < 0 or max_accuracy_drop > 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--max-accuracy-drop")
    folder = ModelFolder(source, _verify_key(verify_key))
    p = folder.promote(candidate, data, check_label(label_name), max_accuracy_drop,
                       report_dir)
    if not p.moved:
        click.echo(f"{label_name} is already version {candidate} of {folder.model_name}")
    elif p.before is None:
        click.echo(f"promoted: {label_name} -> {candidate} ({folder.model_name}; accuracy "
                   f"{p.figures['candidate']:.4f} on --data; no version had the label)")
    else:
        f = p.figures
        click.echo(f"promoted: {label_name} {p.before} -> {p.after} ({folder.model_name}; "
                   f"accuracy {f['candidate']:.4f} vs {f['baseline']:.4f}, difference "
                   f"{f['difference']:+.4f}, 95% CI {f['ci'][0]:+.4f} to {f['ci'][1]:+.4f}, "
                   f"{f['images']} images)")


@click.command()
@_source
@click.option("--label", "label_name", default=DEFAULT_LABEL, show_default=True,
              help="The label to move back.")
@click.option("--verify-key", type=click.Path(dir_okay=False), envvar="VERIFY_KEY",
              help="Also require the previous version to be signed with this public key.")
@_store_command
def rollback(source, label_name, verify_key) -> None:
    """Point a label (stable) back at the version it named before.

    Pullers keep that version installed and loaded, so serving switches back within one
    poll interval."""
    from contract.labels import check_label
    from serving.store import ModelFolder

    folder = ModelFolder(source, _verify_key(verify_key))
    old, new = folder.rollback(check_label(label_name))
    click.echo(f"rolled back: {label_name} {old} -> {new} ({folder.model_name})")


@click.command()
@_source
@click.option("--keep", type=int, required=True, help="Keep the newest N versions.")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@_store_command
def gc(source, keep, dry_run) -> None:
    """Delete old versions from the store: all but the newest --keep and the labelled ones.

    Each goes manifest first, so it disappears for every reader at once."""
    from serving.store import ModelFolder

    plan = ModelFolder(source).gc(keep, dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"kept {plan.kept} (newest {keep}), {plan.labelled} (labelled); {verb} "
               f"{plan.deleted}")
