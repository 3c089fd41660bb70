"""Model signatures: OpenSSF model signing (`model-signing`, a Sigstore bundle) in key mode.

The trainer signs a finished version folder with an EC private key; the signature,
`model.sig`, covers every file of the version except `_MANIFEST.json` and itself (DESIGN
section 3). A puller given the public key checks the signature before it fetches any other
file, compares the signed digests with the manifest, and verifies the downloaded folder
again, with model-signing's own verifier, before the version is renamed into place.

No cryptography is written here: keys are read by `cryptography`, bundles are made and
checked by `model-signing` (pinned exactly in pyproject.toml; `signed_digests` uses its
key-mode verifier class directly, tests/unit/test_signing.py holds it to that).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from contract.errors import InputError
from contract.manifest import MANIFEST_FILE, ManifestFile
from contract.names import SIGNATURE_FILE

log = logging.getLogger(__name__)
# A key-mode bundle over a few dozen files is a few kilobytes.
MAX_SIGNATURE_BYTES = 1 << 20
# What a signature never covers: the manifest (written after signing, it lists model.sig)
# and the signature itself. Everything else is covered, git-like names included.
UNSIGNED_FILES = (MANIFEST_FILE, SIGNATURE_FILE)
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # model-signing's key mode


class SignatureError(ValueError):
    """A version's signature is missing, malformed, made with another key, or does not
    match the files. The message says which."""


def signature_entry(files: list[ManifestFile]) -> ManifestFile:
    """The manifest's `model.sig` entry, when a signature is required: SignatureError when
    the version has none, or one too big to be a signature."""
    [entry] = [f for f in files if f.path == SIGNATURE_FILE] or [None]
    if entry is None:
        raise SignatureError(f"unsigned (no {SIGNATURE_FILE}), and --verify-key requires one")
    if entry.size > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{SIGNATURE_FILE} has {entry.size} bytes (at most "
                             f"{MAX_SIGNATURE_BYTES})")
    return entry


def _hashing_config():
    from model_signing import hashing

    return hashing.Config().use_file_serialization(
        hashing_algorithm="sha256", allow_symlinks=False).set_ignored_paths(
        paths=list(UNSIGNED_FILES), ignore_git_paths=False)


@dataclass(frozen=True)
class _Key:
    """A PEM EC key file, checked when loaded; `key_id` names it in logs."""

    path: Path
    key_id: str
    private = False
    option = ""

    @classmethod
    def load(cls, path: str | Path, option: str | None = None):
        """Load and check the key, or raise InputError naming the option and the file."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        option = option or cls.option
        p = Path(path).expanduser()
        try:
            data = p.read_bytes()
        except OSError as e:
            raise InputError(f"{option} {path}: cannot read: {e.strerror or e}") from None
        try:
            key = (serialization.load_pem_private_key(data, None) if cls.private
                   else serialization.load_pem_public_key(data))
        except (ValueError, TypeError) as e:
            kind = "an unencrypted PEM private key" if cls.private else "a PEM public key"
            raise InputError(f"{option} {path}: not {kind} ({e})") from None
        public = key.public_key() if cls.private else key
        if not isinstance(public, ec.EllipticCurvePublicKey) or \
                public.curve.name not in SUPPORTED_CURVES:
            raise InputError(f"{option} {path}: an EC key on P-256, P-384 or P-521 is "
                             "required (openssl ecparam -name prime256v1 -genkey -noout "
                             "-out key.pem)")
        # The key's short name: sha256 of its public PEM, as model-signing's bundle hint.
        return cls(p, hashlib.sha256(_public_pem(public)).hexdigest()[:16])


class SigningKey(_Key):
    private = True
    option = "--signing-key"

    def sign(self, version_dir: Path) -> Path:
        """Write `model.sig` into `version_dir`, over every file but the unsigned ones."""
        from model_signing import signing

        target = version_dir / SIGNATURE_FILE
        signing.Config().use_elliptic_key_signer(private_key=self.path).set_hashing_config(
            _hashing_config()).sign(version_dir, target)
        return target


class VerifyKey(_Key):
    option = "--verify-key"

    def signed_digests(self, signature: Path) -> dict[str, str]:
        """Check the bundle's signature against this key and return what it signs:
        {relative path: sha256 hex}. Nothing of the model is needed for this."""
        from model_signing._signing import sign_ec_key, sign_sigstore_pb

        try:
            bundle = sign_sigstore_pb.Signature.read(signature)
        except Exception as e:  # noqa: BLE001 - any parse failure means "not a bundle"
            raise SignatureError(f"{SIGNATURE_FILE} is not a model-signing bundle "
                                 f"({type(e).__name__})") from None
        try:
            manifest = sign_ec_key.Verifier(self.path).verify(bundle)
        except Exception as e:  # noqa: BLE001 - wrong key, bad signature, bad payload
            text = str(e)
            if "Key mismatch" in text or "InvalidSignature" in type(e).__name__ or \
                    "signature" in text.lower():
                raise SignatureError(f"{SIGNATURE_FILE} was not made by the key in "
                                     f"--verify-key (key {self.key_id})") from None
            raise SignatureError(f"{SIGNATURE_FILE} does not verify with key {self.key_id}: "
                                 f"{type(e).__name__}: {text[:200]}") from None
        kind = manifest.serialization_type
        if kind.get("method") != "files" or kind.get("hash_type") != "sha256":
            raise SignatureError(f"{SIGNATURE_FILE} uses {kind.get('method')}/"
                                 f"{kind.get('hash_type')} hashing; this project signs "
                                 "files with sha256")
        return {str(r.identifier): r.digest.digest_hex for r in manifest.resource_descriptors()}

    def check_listing(self, signed: dict[str, str], listed: dict[str, str]) -> None:
        """The manifest's files (but the unsigned ones) must be exactly the signed ones,
        with the same sha256: checked before anything else is downloaded."""
        listed = {p: d for p, d in listed.items() if p not in UNSIGNED_FILES}
        for path in sorted(set(listed) | set(signed)):
            if path not in signed:
                raise SignatureError(f"{path} is not covered by {SIGNATURE_FILE}")
            if path not in listed:
                raise SignatureError(f"{path} is signed but missing from the manifest")
            if listed[path] != signed[path]:
                raise SignatureError(f"{path} does not match its signed sha256")

    def check_signed_files(self, signature: Path, listed: dict[str, str]) -> None:
        """The signature (a local copy of `model.sig`) is this key's, and it signs exactly
        the files `listed` ({path: sha256}, from the manifest) with their sha256s."""
        self.check_listing(self.signed_digests(signature), listed)

    def verify_folder(self, version_dir: Path) -> None:
        """model-signing's full verification of a local version folder."""
        from model_signing import verifying

        try:
            verifying.Config().use_elliptic_key_verifier(public_key=self.path) \
                .set_hashing_config(_hashing_config()) \
                .verify(version_dir, version_dir / SIGNATURE_FILE)
        except Exception as e:  # noqa: BLE001 - model-signing raises ValueError & others
            raise SignatureError(f"the downloaded files do not verify against "
                                 f"{SIGNATURE_FILE}: {str(e)[:300]}") from None


def make_key_pair(private: Path, public: Path) -> bool:
    """An EC P-256 key pair, as `openssl ecparam -name prime256v1 -genkey` makes it: the
    private key (SEC1 PEM, mode 0600) and its public key (SubjectPublicKeyInfo PEM). An
    existing pair is kept (returns False), so a deployment can run this on every start."""
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if private.exists():
        if not public.exists():
            from cryptography.hazmat.primitives import serialization

            SigningKey.load(private, "--private")  # a usable key, or one clear line
            key = serialization.load_pem_private_key(private.read_bytes(), None)
            public.write_bytes(_public_pem(key.public_key()))
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    for path in (private, public):
        path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(_public_pem(key.public_key()))
    return True


def _public_pem(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def main() -> None:
    """`python -m contract.signing --private P --public Q`: make the pair unless present
    (docker compose's `keys` step and `make demo` use it; the README shows openssl)."""
    import click

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--private", "private", required=True, type=click.Path(dir_okay=False),
                  help="Where the private (signing) key goes; kept if it exists.")
    @click.option("--public", "public", required=True, type=click.Path(dir_okay=False),
                  help="Where its public (verify) key goes.")
    def keys(private, public) -> None:
        """Make an EC P-256 key pair for signing models, unless one exists."""
        made = make_key_pair(Path(private), Path(public))
        key = VerifyKey.load(public)
        click.echo(f"{'made' if made else 'kept'} key pair {key.key_id}: {private} (private), "
                   f"{public} (public)")

    keys()


if __name__ == "__main__":
    main()
