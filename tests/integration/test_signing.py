"""Signed models against a real S3 store: the puller installs only versions signed by the
trainer's key, checks the signature before any other file, and `serving verify` says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.manifest import MANIFEST_FILE, build_manifest, list_version_files
from contract.names import SIGNATURE_FILE
from contract.signing import SigningKey, VerifyKey
from contract.storage import S3Location, open_location
from serving.puller import Puller
from tests.conftest import MODELS_BUCKET, run_cli, unique
from tests.integration.test_puller import make_version
from trainer.publish import publish

pytestmark = pytest.mark.s3


def verify_cli(source: str, key: Path):
    return run_cli("serving", "verify", "--source", source, "--verify-key", str(key),
                   timeout=120)


def one_error_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_the_trainers_signed_version_is_installed_and_verifies(published_s3, signing_keys,
                                                               tmp_path):
    assert "signed by key " in published_s3["proc"].stdout
    manifest = json.loads(open_location(published_s3["version_uri"]).read_bytes(MANIFEST_FILE))
    listed = {f["path"] for f in manifest["files"]}
    assert SIGNATURE_FILE in listed  # the manifest lists the signature it does not cover
    key = VerifyKey.load(signing_keys["public"])
    proc = verify_cli(published_s3["version_uri"], signing_keys["public"])
    assert proc.returncode == 0, proc.stderr
    assert f"verified: version 1 of demo ({len(listed)} files) is signed by key " \
           f"{key.key_id}" in proc.stdout
    dest = tmp_path / "serve" / "demo"
    pull = run_cli("serving", "pull", "--source", f"{published_s3['models']}/demo", "--dest",
                   str(dest), "--quiet", env={"VERIFY_KEY": str(signing_keys["public"])})
    assert pull.returncode == 0, pull.stderr
    assert (dest / "1" / SIGNATURE_FILE).is_file()
    assert f"signature verified with key {key.key_id}" in pull.stderr
    # The same version under another key is refused, by verify and by pull.
    other = verify_cli(published_s3["version_uri"], signing_keys["other_public"])
    assert other.returncode == 2
    assert "model.sig was not made by the key in --verify-key" in one_error_line(other)


def rewrite_manifest(remote, folder: Path, model: str, version: int) -> None:
    """What an attacker with write access to the bucket does after changing files: a
    manifest that lists the new sizes and sha256s, consistently."""
    files = list_version_files(folder)
    manifest = build_manifest(model_name=model, version=version, classes=["a", "b"],
                              base_model={}, input_spec={}, metrics={}, dataset={},
                              files=files)
    for f in files:
        remote.upload_file(f.path, folder / f.path, None)
    remote.write_bytes(MANIFEST_FILE, (json.dumps(manifest) + "\n").encode())


def signed_version(tmp_path: Path, models_uri: str, model: str, version: int,
                   key: Path | None) -> Path:
    """A small version folder, signed with `key` the trainer's way, published to S3."""
    folder, _, _ = make_version(tmp_path, model, version)
    if key is not None:
        SigningKey.load(key).sign(folder)
    files = list_version_files(folder)
    manifest = build_manifest(model_name=model, version=version, classes=["a", "b"],
                              base_model={}, input_spec={}, metrics={}, dataset={},
                              files=files)
    publish(folder, files, manifest, models_uri, model, version, quiet=True)
    (folder / MANIFEST_FILE).unlink()
    return folder


ATTACKS = {
    "labels swapped, manifest rewritten": "assets/labels.txt does not match its signed sha256",
    "a file added, manifest rewritten": "variables/extra is not covered by model.sig",
    "signed with another key": "model.sig was not made by the key in --verify-key",
    "unsigned": "unsigned (no model.sig), and --verify-key requires one",
    "truncated signature": "model.sig is not a model-signing bundle",
    "garbage signature": "model.sig is not a model-signing bundle",
}


@pytest.fixture(scope="module")
def attacked(seaweed, signing_keys, tmp_path_factory) -> dict:
    """One good signed version (1) and one attacked version per case (2, 3, ...), each in
    its own model folder beside it, so every case is pulled on its own."""
    tmp = tmp_path_factory.mktemp("attacks")
    models_uri = f"s3://{MODELS_BUCKET}/{unique('signed')}"
    cases = {}
    for i, case in enumerate(["good", *ATTACKS]):
        model = f"m{i}"
        key = signing_keys["other_private" if case == "signed with another key" else "private"]
        folder = signed_version(tmp, models_uri, model, 1, None if case == "unsigned" else key)
        remote = open_location(f"{models_uri}/{model}/1")
        if case == "labels swapped, manifest rewritten":
            (folder / "assets" / "labels.txt").write_text("b\na\n")
            rewrite_manifest(remote, folder, model, 1)
        elif case == "a file added, manifest rewritten":
            (folder / "variables" / "extra").write_bytes(b"payload")
            rewrite_manifest(remote, folder, model, 1)
        elif case == "truncated signature":
            sig = folder / SIGNATURE_FILE
            sig.write_bytes(sig.read_bytes()[:200])
            rewrite_manifest(remote, folder, model, 1)
        elif case == "garbage signature":
            (folder / SIGNATURE_FILE).write_bytes(b"\x00\xffnot json at all" * 20)
            rewrite_manifest(remote, folder, model, 1)
        cases[case] = f"{models_uri}/{model}"
    return cases


@pytest.mark.parametrize("case", ["good", *ATTACKS])
def test_pull_with_a_verify_key_installs_only_what_the_trainers_key_signed(
        attacked, signing_keys, tmp_path, monkeypatch, case):
    fetched: list[str] = []
    real_download = S3Location.download_file

    def spy(self, path, target, progress=None):
        fetched.append(path)
        return real_download(self, path, target, progress)

    monkeypatch.setattr(S3Location, "download_file", spy)
    dest = tmp_path / "serve" / "m"
    puller = Puller(attacked[case], dest, quiet=True,
                    verify_key=VerifyKey.load(signing_keys["public"]))
    result = puller.sync_once()
    if case == "good":
        assert result.installed == [1] and result.local == [1]
        assert fetched[0] == SIGNATURE_FILE  # the signature first
        return
    assert result.local == [] and not (dest / "1").exists()
    assert [p.name for p in dest.iterdir()] == []  # no staging folder left behind
    assert ATTACKS[case] in result.rejected[1], result.rejected
    # Refused before anything but the signature was downloaded.
    assert set(fetched) <= {SIGNATURE_FILE}, fetched
    # Not tried again while nothing changed in the store.
    fetched.clear()
    assert puller.sync_once().rejected == result.rejected and fetched == []
    # Without a key the same store is pulled as before (no signature required)...
    if case == "unsigned":
        plain = Puller(attacked[case], tmp_path / "plain" / "m", quiet=True).sync_once()
        assert plain.installed == [1]


@pytest.mark.parametrize("case", ["good", *ATTACKS])
def test_serving_verify_exits_0_or_2_with_the_reason(attacked, signing_keys, case):
    proc = verify_cli(f"{attacked[case]}/1", signing_keys["public"])
    if case == "good":
        assert proc.returncode == 0, proc.stderr
        assert "verified: version 1 of m0" in proc.stdout
        return
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert ATTACKS[case] in one_error_line(proc)


def test_verify_refuses_bad_usage_and_bad_keys(attacked, signing_keys, tmp_path):
    missing = verify_cli(f"{attacked['good']}/9", signing_keys["public"])
    assert missing.returncode == 2
    assert "no such published version" in one_error_line(missing)
    not_a_version = verify_cli(attacked["good"], signing_keys["public"])
    assert not_a_version.returncode == 2
    assert "expected <models-uri>/<model-name>/<version>" in one_error_line(not_a_version)
    private_as_public = verify_cli(f"{attacked['good']}/1", signing_keys["private"])
    assert private_as_public.returncode == 2
    assert "not a PEM public key" in one_error_line(private_as_public)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    proc = verify_cli(f"{attacked['good']}/1", garbage)
    assert proc.returncode == 2 and "not a PEM public key" in one_error_line(proc)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = tmp_path / "rsa.pub"
    rsa_key.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    proc = verify_cli(f"{attacked['good']}/1", rsa_key)
    assert proc.returncode == 2
    assert "an EC key on P-256, P-384 or P-521 is required" in one_error_line(proc)
