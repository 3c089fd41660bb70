"""The manifest parser refuses anything a puller must not trust."""

from __future__ import annotations

import hashlib
import json

import pytest

from contract.manifest import ManifestError, build_manifest, list_version_files, parse_manifest


def good(**overrides) -> dict:
    raw = {"format": 1, "model_name": "m", "version": 3, "created": "2026-11-28T16:00:00Z",
           "classes": ["a", "b"], "base_model": {}, "input": {}, "metrics": {}, "dataset": {},
           "files": [{"path": "saved_model.pb", "size": 10, "sha256": "a" * 64},
                     {"path": "variables/variables.index", "size": 0, "sha256": "b" * 64}]}
    raw.update(overrides)
    return raw


def parse(raw) -> object:
    return parse_manifest(json.dumps(raw).encode(), expected_version=3)


def test_a_good_manifest_parses():
    m = parse(good())
    assert m.version == 3 and m.classes == ["a", "b"]
    assert [f.path for f in m.files] == ["saved_model.pb", "variables/variables.index"]


@pytest.mark.parametrize("raw, reason", [
    (good(format=2), "unknown manifest format 2"),
    (good(format="1"), "field 'format' has the wrong type"),
    ({k: v for k, v in good().items() if k != "files"}, "missing field 'files'"),
    (good(version=4), "manifest says version 4 but lies in folder 3"),
    (good(version=True), "field 'version' has the wrong type"),
    (good(classes=[]), "'classes' must be a non-empty list"),
    (good(files=[]), "field 'files' is empty"),
    (good(files=[{"path": "/etc/passwd", "size": 1, "sha256": "a" * 64}]), "escapes"),
    (good(files=[{"path": "../x", "size": 1, "sha256": "a" * 64}]), "escapes"),
    (good(files=[{"path": "a/../../x", "size": 1, "sha256": "a" * 64}]), "escapes"),
    (good(files=[{"path": "a\\..\\x", "size": 1, "sha256": "a" * 64}]), "escapes"),
    (good(files=[{"path": "saved_model.pb", "size": -1, "sha256": "a" * 64}]), "size"),
    (good(files=[{"path": "saved_model.pb", "size": 1, "sha256": "XYZ"}]), "sha256"),
    (good(files=[{"path": "x.pb", "size": 1, "sha256": "a" * 64}]), "no saved_model.pb"),
    (good(files=[{"path": "saved_model.pb", "size": 1, "sha256": "a" * 64}] * 2), "twice"),
    (good(files=[{"path": "_MANIFEST.json", "size": 1, "sha256": "a" * 64}]), "itself"),
    ([1, 2], "not a JSON object"),
])
def test_bad_manifests_are_refused_with_a_reason(raw, reason):
    with pytest.raises(ManifestError, match=reason.replace("(", r"\(")):
        parse(raw)


def test_not_json_is_refused():
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"{oops")


def test_built_manifest_round_trips(tmp_path):
    (tmp_path / "variables").mkdir()
    (tmp_path / "saved_model.pb").write_bytes(b"pb")
    (tmp_path / "variables" / "variables.index").write_bytes(b"")
    files = list_version_files(tmp_path)
    raw = build_manifest(model_name="m", version=3, classes=["a", "b"], base_model={},
                         input_spec={}, metrics={}, dataset={}, files=files)
    m = parse(raw)
    assert [(f.path, f.size) for f in m.files] == [("saved_model.pb", 2),
                                                    ("variables/variables.index", 0)]
    assert m.files[0].sha256 == hashlib.sha256(b"pb").hexdigest()
