"""Signed models against a real S3 store: the puller installs only versions signed by the
trainer's key, checks the signature before any other file, and `serving verify` says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.manifest import MANIFEST_FILE, build_manifest, list_version_files
from contract.names import IDENTITY_FILE, SIGNATURE_FILE
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
                   str(dest), env={"VERIFY_KEY": str(signing_keys["public"])})
    assert pull.returncode == 0, pull.stderr
    assert (dest / "1" / SIGNATURE_FILE).is_file()
    assert f"signature verified with key {key.key_id}" in pull.stderr
    # The same version under another key is refused, by verify and by pull.
    other = verify_cli(published_s3["version_uri"], signing_keys["other_public"])
    assert other.returncode == 2
    assert "model.sig was not made by the key in --verify-key" in one_error_line(other)


def rewrite_manifest(remote, folder: Path, model: str, version: int,
                     classes: tuple[str, ...] = ("a", "b")) -> None:
    """What an attacker with write access to the bucket does after changing files: a
    manifest that lists the new sizes and sha256s, consistently."""
    files = list_version_files(folder)
    manifest = build_manifest(model_name=model, version=version, classes=list(classes),
                              base_model={}, input_spec={}, metrics={}, dataset={},
                              files=files)
    for f in files:
        remote.upload_file(f.path, folder / f.path, None)
    remote.write_bytes(MANIFEST_FILE, (json.dumps(manifest) + "\n").encode())


def signed_version(tmp_path: Path, models_uri: str, model: str, version: int,
                   key: Path | None, identity: bool = True) -> Path:
    """A small version folder, signed with `key` the trainer's way, published to S3."""
    folder, _, _ = make_version(tmp_path, model, version, identity=identity)
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
    # Signed bytes moved or relabelled: the signature binds what the version is.
    "copied to a higher version number": "identity.json says version 1 of model 'm{i}', "
                                         "but it was found as version 9000000000 of 'm{i}'",
    "another model's version copied in": "identity.json says version 1 of model 'other', "
                                         "but it was found as version 1 of 'm{i}'",
    "classes reversed in the manifest": "the manifest's classes ['b', 'a'] differ from "
                                        "['a', 'b'] in identity.json",
    "signed without an identity": "the signed files have no identity.json",
}
COPIED_TO = {"copied to a higher version number": 9_000_000_000}


def expected(case: str, models_uri: str) -> str:
    return ATTACKS[case].format(i=models_uri.rsplit("/m", 1)[1])


@pytest.fixture(scope="module")
def attacked(seaweed, signing_keys, tmp_path_factory) -> dict:
    """One good signed version (1) and one attacked version per case (1, or where it was
    copied to), each in its own model folder beside it, so every case is pulled on its own:
    {case: (model folder URI, version)}."""
    tmp = tmp_path_factory.mktemp("attacks")
    models_uri = f"s3://{MODELS_BUCKET}/{unique('signed')}"
    origin = f"s3://{MODELS_BUCKET}/{unique('origin')}"  # where signed versions come from
    cases = {}
    for i, case in enumerate(["good", *ATTACKS]):
        model = f"m{i}"
        version = COPIED_TO.get(case, 1)
        key = signing_keys["other_private" if case == "signed with another key" else "private"]
        remote = open_location(f"{models_uri}/{model}/{version}")
        if case in ("copied to a higher version number", "another model's version copied in"):
            # The trainer's own signed version elsewhere, copied with a manifest that
            # says where it now lies: every byte and the signature unchanged.
            source = "other" if "another model" in case else model
            folder = signed_version(tmp, origin, source, 1, key)
            rewrite_manifest(remote, folder, model, version)
            cases[case] = (f"{models_uri}/{model}", version)
            continue
        folder = signed_version(tmp, models_uri, model, 1, None if case == "unsigned" else key,
                                identity=case != "signed without an identity")
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
        elif case == "classes reversed in the manifest":
            rewrite_manifest(remote, folder, model, 1, classes=("b", "a"))
        cases[case] = (f"{models_uri}/{model}", 1)
    return cases


@pytest.mark.parametrize("case", ["good", *ATTACKS])
def test_pull_with_a_verify_key_installs_only_what_the_trainers_key_signed(
        attacked, signing_keys, tmp_path, monkeypatch, case):
    fetched: list[str] = []
    real_download = S3Location.download_file

    def spy(self, path, target, progress=None, size=None):
        fetched.append(path)
        return real_download(self, path, target, progress, size)

    monkeypatch.setattr(S3Location, "download_file", spy)
    dest = tmp_path / "serve" / "m"
    uri, version = attacked[case]
    puller = Puller(uri, dest, quiet=True, verify_key=VerifyKey.load(signing_keys["public"]))
    result = puller.sync_once()
    if case == "good":
        assert result.installed == [1] and result.local == [1]
        assert fetched[:2] == [SIGNATURE_FILE, IDENTITY_FILE]  # the small files first
        return
    assert result.local == [] and not (dest / str(version)).exists()
    assert [p.name for p in dest.iterdir()] == []  # no staging folder left behind
    assert expected(case, uri) in result.rejected[version], result.rejected
    # Refused before anything but the signature and the identity was downloaded.
    assert set(fetched) <= {SIGNATURE_FILE, IDENTITY_FILE}, fetched
    # Not tried again while nothing changed in the store.
    fetched.clear()
    assert puller.sync_once().rejected == result.rejected and fetched == []
    # Without a key the same store is pulled as before (no signature required), but an
    # identity that disagrees with where the version lies is refused all the same.
    plain = Puller(uri, tmp_path / "plain" / "m", quiet=True).sync_once()
    if case in ("unsigned", "signed without an identity") or "manifest rewritten" in case \
            or "signature" in case or case == "signed with another key":
        assert plain.installed == [version]
    else:
        assert plain.installed == [] and expected(case, uri) in plain.rejected[version]


@pytest.mark.parametrize("case", ["good", *ATTACKS])
def test_serving_verify_exits_0_or_2_with_the_reason(attacked, signing_keys, case):
    uri, version = attacked[case]
    proc = verify_cli(f"{uri}/{version}", signing_keys["public"])
    if case == "good":
        assert proc.returncode == 0, proc.stderr
        assert "verified: version 1 of m0" in proc.stdout
        return
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert expected(case, uri) in one_error_line(proc)


def test_verify_refuses_bad_usage_and_bad_keys(attacked, signing_keys, tmp_path):
    missing = verify_cli(f"{attacked['good'][0]}/9", signing_keys["public"])
    assert missing.returncode == 2
    assert "no such published version" in one_error_line(missing)
    not_a_version = verify_cli(attacked["good"][0], signing_keys["public"])
    assert not_a_version.returncode == 2
    assert "expected <models-uri>/<model-name>/<version>" in one_error_line(not_a_version)
    private_as_public = verify_cli(f"{attacked['good'][0]}/1", signing_keys["private"])
    assert private_as_public.returncode == 2
    assert "not a PEM public key" in one_error_line(private_as_public)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    proc = verify_cli(f"{attacked['good'][0]}/1", garbage)
    assert proc.returncode == 2 and "not a PEM public key" in one_error_line(proc)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = tmp_path / "rsa.pub"
    rsa_key.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    proc = verify_cli(f"{attacked['good'][0]}/1", rsa_key)
    assert proc.returncode == 2
    assert "an EC key on P-256, P-384 or P-521 is required" in one_error_line(proc)
