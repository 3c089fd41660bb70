"""A model's folder in the store, `<models>/<name>/`: its versions, labels and retention.

`serving label set|rm|ls`, `serving rollback`, `serving gc` and `trainer promote` act on it
directly: labels are one small object replaced whole (contract.labels); gc deletes old,
unlabelled versions manifest first, so each disappears for every reader at once and is never
seen half-deleted. No TensorFlow here: promote's scoring is passed in by the trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from contract.errors import GateNotMet, InputError, UserError
from contract.labels import Labels, LabelsError, read_labels
from contract.manifest import MANIFEST_FILE, Manifest
from contract.names import LABELS_OBJECT, parse_version
from contract.signing import SignatureError, VerifyKey
from contract.storage import Location, open_location
from contract.versions import Rejected, check_sizes, fetch_head, read_manifest

log = logging.getLogger(__name__)
# (the candidate version's URI, the baseline version or None) -> `trainer evaluate`'s metrics
Scorer = Callable[[str, str | None], dict]


class ModelFolder:
    """`<models>/<name>/` in the store."""

    def __init__(self, source: str, verify_key: VerifyKey | None = None):
        self.location: Location = open_location(source)
        self.model_name = self.location.uri.rstrip("/").rsplit("/", 1)[-1]
        self.verify_key = verify_key

    # -- versions -------------------------------------------------------------------------
    def versions(self) -> list[int]:
        """Every numbered folder, newest first (published or not)."""
        return sorted((v for v in map(parse_version, self.location.list_dirs()) if v),
                      reverse=True)

    def verified_manifest(self, version: int) -> Manifest:
        """The version's manifest, parsed strictly, naming this model, with every file it
        lists present at its size (and signed by `verify_key`, when given). InputError
        (exit 2) says what is wrong."""
        remote = self.location.child(str(version))
        stored = {e.path: e for e in remote.list_files()}
        if MANIFEST_FILE not in stored:
            raise InputError(f"version {version} of {self.model_name} is not published (no "
                             f"{MANIFEST_FILE} under {remote.uri})")
        try:
            manifest = read_manifest(self.location, self.model_name, version)
            check_sizes(manifest, stored)
            if self.verify_key is not None:
                self._check_signature(remote, manifest)
        except (Rejected, SignatureError) as e:
            raise InputError(f"version {version} of {self.model_name}: {e}") from None
        return manifest

    def _check_signature(self, remote: Location, manifest: Manifest) -> None:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="verify-") as work:
            fetch_head(remote, manifest, Path(work), self.verify_key)

    # -- labels ---------------------------------------------------------------------------
    def labels(self) -> Labels:
        """The labels in the store; none when there is no labels object yet."""
        try:
            return read_labels(self.location, self.model_name)
        except LabelsError as e:
            raise InputError(f"{self.location.uri}/{LABELS_OBJECT}: {e}") from None

    def set_labels(self, assignments: dict[str, int]) -> Labels:
        """Point labels at versions; each must be published and verify. One atomic write."""
        current = self.labels()
        for label, version in assignments.items():
            self.verified_manifest(version)
            log.info("label %s -> version %d of %s", label, version, self.model_name)
        updated = current.moved(assignments)
        self.location.write_bytes(LABELS_OBJECT, updated.to_bytes())
        return updated

    def remove_labels(self, names: list[str]) -> Labels:
        current = self.labels()
        missing = [n for n in names if n not in current.labels]
        if missing:
            raise InputError(f"no label {', '.join(missing)} on {self.model_name} (labels: "
                             f"{', '.join(sorted(current.labels)) or 'none'})")
        updated = current.removed(names)
        self.location.write_bytes(LABELS_OBJECT, updated.to_bytes())
        return updated

    def rollback(self, label: str) -> tuple[int, int]:
        """Point `label` back at the version it named before; (from, to). The target must
        still be published and verify."""
        current = self.labels()
        if label not in current.labels:
            raise InputError(f"no label {label} on {self.model_name} (labels: "
                             f"{', '.join(sorted(current.labels)) or 'none'})")
        try:
            updated = current.rolled_back(label)
        except LabelsError as e:
            raise InputError(f"{self.model_name}: {e}") from None
        self.verified_manifest(updated.labels[label])
        self.location.write_bytes(LABELS_OBJECT, updated.to_bytes())
        log.info("label %s: version %d -> %d of %s (rollback)", label, current.labels[label],
                 updated.labels[label], self.model_name)
        return current.labels[label], updated.labels[label]

    # -- promotion ------------------------------------------------------------------------
    def promote(self, candidate: int, label: str, max_drop: float, score: Scorer,
                data: str) -> Promotion:
        """Score `candidate` against the version `label` names and move the label only if
        the candidate's accuracy is at most `max_drop` below it (GateNotMet, exit 4,
        otherwise). `score(candidate_uri, baseline)` is `trainer evaluate`'s scoring (the
        exported graph through serving_default, so TensorFlow), passed in by `trainer
        promote`. `data` names the images in messages."""
        self.verified_manifest(candidate)
        before = self.labels()
        current = before.labels.get(label)
        if current == candidate:
            return Promotion(label, current, candidate, None, moved=False)
        log.info("evaluating version %d against %s on %s", candidate,
                 f"version {current}" if current else "nothing (no version labelled yet)",
                 data)
        try:
            metrics = score(f"{self.location.uri}/{candidate}",
                            None if current is None else str(current))
        except UserError as e:
            error = UserError(f"evaluation failed, nothing moved: {e}")
            error.exit_code = e.exit_code
            raise error from e
        if current is None:
            accuracy = metrics["accuracy"]
            promotion = Promotion(label, None, candidate, {"candidate": accuracy})
        else:
            diff = metrics["difference"]
            promotion = Promotion(label, current, candidate, {
                "candidate": metrics["candidate"]["accuracy"],
                "baseline": metrics["baseline"]["accuracy"], "difference": diff["accuracy"],
                "ci": diff["accuracy_ci"], "images": diff["images"]})
            if diff["accuracy"] < -max_drop:
                raise GateNotMet(
                    f"not promoted: version {candidate} scores accuracy "
                    f"{promotion.figures['candidate']:.4f} on {data}, "
                    f"{-diff['accuracy']:.4f} below {label} version {current} "
                    f"({promotion.figures['baseline']:.4f}), more than --max-accuracy-drop "
                    f"{max_drop}; {label} stays at {current}")
        if self.labels() != before:
            raise InputError(f"the labels of {self.model_name} changed during the evaluation; "
                             "nothing moved (run promote again)")
        self.set_labels({label: candidate})
        return promotion

    # -- retention ------------------------------------------------------------------------
    def gc(self, keep: int, dry_run: bool) -> GcPlan:
        """Delete versions beyond the newest `keep` that no label names. Each goes manifest
        first: from that moment no reader (puller, server) considers it."""
        if keep < 1:
            raise InputError(f"--keep must be at least 1, got {keep}")
        labelled = self.labels().pinned()  # a broken labels object stops gc
        versions = self.versions()
        plan = GcPlan(kept=versions[:keep], labelled=sorted(labelled & set(versions)),
                      deleted=[v for v in versions[keep:] if v not in labelled])
        if dry_run:
            return plan
        for version in plan.deleted:
            remote = self.location.child(str(version))
            remote.delete([MANIFEST_FILE])  # gone for readers, at once
            rest = [e.path for e in remote.list_files()]
            remote.delete(rest)
            log.info("deleted version %d of %s (%d files)", version, self.model_name,
                     len(rest) + 1)
        return plan


@dataclass
class Promotion:
    label: str
    before: int | None
    after: int
    figures: dict | None  # accuracies (and their difference) on the evaluation data
    moved: bool = True


@dataclass
class GcPlan:
    kept: list[int]  # the newest `keep`
    labelled: list[int]  # kept because a label names them, now or as rollback's target
    deleted: list[int]
