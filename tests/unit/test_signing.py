"""contract.signing on local folders: what model-signing signs is what the puller checks."""

from __future__ import annotations

import pytest

from contract.errors import InputError
from contract.manifest import MANIFEST_FILE, list_version_files
from contract.names import SIGNATURE_FILE
from contract.signing import SignatureError, SigningKey, VerifyKey, make_key_pair


@pytest.fixture
def keys(tmp_path):
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    assert make_key_pair(private, public)
    return SigningKey.load(private), VerifyKey.load(public)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "version"
    (root / "assets").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph" * 100)
    (root / "assets" / "labels.txt").write_text("cat\ndog\n")
    (root / ".gitignore").write_text("*\n")  # covered too: nothing in a version is exempt
    return root


def test_the_signature_covers_every_file_but_the_manifest_and_itself(keys, folder):
    signer, verifier = keys
    (folder / MANIFEST_FILE).write_text("{}")  # present at verification, never signed
    signer.sign(folder)
    signed = verifier.signed_digests(folder / SIGNATURE_FILE)
    listed = {f.path: f.sha256 for f in list_version_files(folder)}
    assert signed == {p: d for p, d in listed.items() if p != SIGNATURE_FILE}
    assert signer.key_id == verifier.key_id
    verifier.check_listing(signed, listed)
    verifier.verify_folder(folder)
    (folder / MANIFEST_FILE).write_text('{"rewritten": true}')
    verifier.verify_folder(folder)  # the manifest may be rewritten: it is not what is trusted


def test_any_change_to_a_signed_file_or_the_file_set_is_refused(keys, folder):
    signer, verifier = keys
    signer.sign(folder)
    signed = verifier.signed_digests(folder / SIGNATURE_FILE)
    listed = {f.path: f.sha256 for f in list_version_files(folder)}
    with pytest.raises(SignatureError, match="assets/labels.txt does not match its signed"):
        verifier.check_listing(signed, {**listed, "assets/labels.txt": "0" * 64})
    with pytest.raises(SignatureError, match="extra is not covered by model.sig"):
        verifier.check_listing(signed, {**listed, "extra": "0" * 64})
    with pytest.raises(SignatureError, match="saved_model.pb is signed but missing"):
        verifier.check_listing(signed, {p: d for p, d in listed.items()
                                        if p != "saved_model.pb"})
    (folder / "assets" / "labels.txt").write_text("dog\ncat\n")
    with pytest.raises(SignatureError, match="do not verify"):
        verifier.verify_folder(folder)


def test_another_key_and_malformed_signatures_are_refused(keys, folder, tmp_path):
    signer, verifier = keys
    other_private, other_public = tmp_path / "o.pem", tmp_path / "o.pub"
    make_key_pair(other_private, other_public)
    SigningKey.load(other_private).sign(folder)
    with pytest.raises(SignatureError, match="not made by the key in --verify-key"):
        verifier.signed_digests(folder / SIGNATURE_FILE)
    good = (folder / SIGNATURE_FILE).read_bytes()
    for bad in (good[: len(good) // 2], b"", b"\x00\xff" * 50, b"{}", b"[1, 2]",
                good.replace(b'"dsseEnvelope"', b'"somethingElse"')):
        (folder / SIGNATURE_FILE).write_bytes(bad)
        with pytest.raises(SignatureError):
            verifier.signed_digests(folder / SIGNATURE_FILE)


def test_key_files_are_checked_and_an_existing_pair_is_kept(tmp_path):
    private, public = tmp_path / "a.pem", tmp_path / "a.pub"
    assert make_key_pair(private, public)
    before = private.read_bytes()
    assert not make_key_pair(private, public) and private.read_bytes() == before
    public.unlink()
    assert not make_key_pair(private, public)  # the public half is made again from it
    assert VerifyKey.load(public).key_id == SigningKey.load(private).key_id
    with pytest.raises(InputError, match="not an unencrypted PEM private key"):
        SigningKey.load(public)
    with pytest.raises(InputError, match="cannot read"):
        VerifyKey.load(tmp_path / "missing.pub")
