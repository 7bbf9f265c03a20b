"""Signed model version directories: write, digest, sign, verify.

A model version is a directory ``<model_dir>/<name>/<version>/`` holding:

* ``model.onnx``        the model;
* ``metadata.json``     a :class:`~services.scorer.metadata.ModelMetadata`;
* ``digest.sha256``     ``sha256sum`` format, one line per file above (so an operator can
  check it with ``sha256sum -c digest.sha256``);
* ``digest.sha256.sig`` the raw 64-byte Ed25519 signature of ``digest.sha256``'s bytes.

:func:`verify_version` reads each file once, checks the digests and the signature and
returns the verified bytes; the scorer builds its session from those bytes, never from a
second read of the file (which could have changed in between).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError as PydanticValidationError

from services.scorer.metadata import ModelMetadata
from streamml.errors import StreamMLError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
DIGEST_FILE = "digest.sha256"
SIGNATURE_FILE = "digest.sha256.sig"
SIGNED_FILES = (MODEL_FILE, METADATA_FILE)
PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"


class ArtifactError(StreamMLError):
    """A model version that must not be served; ``reason`` is a short metric label.

    Reasons: ``missing`` (a file is absent), ``unsigned`` (no signature), ``malformed_digest``,
    ``digest_mismatch`` (a file changed after signing), ``bad_signature`` (wrong key or
    tampered digest), ``metadata_invalid``, ``feature_set_mismatch``, ``load_failed``
    (onnxruntime refused the model or its warm-up failed).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SigningKeyError(StreamMLError):
    """A signing key file is missing, unreadable, of the wrong type or too widely readable."""


@dataclass(frozen=True)
class VerifiedArtifact:
    """A model version whose digest and signature verified; bytes as they were checked."""

    path: Path
    metadata: ModelMetadata
    model_bytes: bytes
    digest_sha256: str
    """SHA-256 of ``digest.sha256``: one fingerprint for the whole version."""


# -- keys ---------------------------------------------------------------------------------


def generate_keypair(out_dir: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair to ``out_dir`` (private key mode 0600); never overwrite."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / PRIVATE_KEY_FILE
    public_path = out_dir / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(f"{path} already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Create with 0600 from the start: no window where the key is world-readable.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path``; refuses a file readable by group or others."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read private key {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(f"private key {path} is accessible by others; run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in ``path`` (PEM SubjectPublicKeyInfo)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read public key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SigningKeyError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key, for logs (first 16 hex of its SHA-256)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- digest and signature -----------------------------------------------------------------


def digest_document(files: dict[str, bytes]) -> bytes:
    """The ``digest.sha256`` bytes for the signed files, in ``sha256sum`` format."""
    lines = [f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in SIGNED_FILES]
    return "".join(lines).encode()


def _parse_digest(document: bytes, where: Path) -> dict[str, str]:
    digests: dict[str, str] = {}
    try:
        text = document.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ArtifactError("malformed_digest", f"{where}: not ASCII") from exc
    for line in text.splitlines():
        hexdigest, sep, name = line.partition("  ")
        if not sep or len(hexdigest) != 64 or name in digests:
            raise ArtifactError("malformed_digest", f"{where}: bad line {line[:80]!r}")
        digests[name] = hexdigest.lower()
    if set(digests) != set(SIGNED_FILES):
        raise ArtifactError(
            "malformed_digest",
            f"{where}: must list exactly {', '.join(SIGNED_FILES)}, lists {sorted(digests)}",
        )
    return digests


def write_version(
    model_dir: Path,
    model_bytes: bytes,
    metadata: ModelMetadata,
    private_key: Ed25519PrivateKey,
) -> Path:
    """Write and sign ``<model_dir>/<name>/<version>/``; atomic (temp dir + rename).

    Refuses to overwrite an existing version: a version, once signed, never changes.
    """
    target = model_dir / metadata.model_name / metadata.model_version
    if target.exists():
        raise ArtifactError("exists", f"{target} already exists; versions are immutable")
    target.parent.mkdir(parents=True, exist_ok=True)
    files = {MODEL_FILE: model_bytes, METADATA_FILE: metadata.to_json()}
    document = digest_document(files)
    staging = Path(tempfile.mkdtemp(prefix=f".{metadata.model_version}.", dir=target.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        (staging / DIGEST_FILE).write_bytes(document)
        (staging / SIGNATURE_FILE).write_bytes(private_key.sign(document))
        staging.chmod(0o755)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _read(path: Path, reason: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(reason, f"{path} is missing") from exc
    except OSError as exc:
        raise ArtifactError("missing", f"cannot read {path}: {exc.strerror}") from exc


def verify_version(path: Path, public_key: Ed25519PublicKey) -> VerifiedArtifact:
    """Check the digest and signature of the version directory ``path``; raise ArtifactError.

    Order matters: the signature is checked over the digest document first (so nothing
    unsigned is even parsed as JSON), then every file against its signed digest.
    """
    if not path.is_dir():
        raise ArtifactError("missing", f"{path} is not a model version directory")
    document = _read(path / DIGEST_FILE, "unsigned")
    signature = _read(path / SIGNATURE_FILE, "unsigned")
    try:
        public_key.verify(signature, document)
    except InvalidSignature as exc:
        raise ArtifactError(
            "bad_signature",
            f"{path}: signature does not verify with key {key_id(public_key)} "
            "(wrong key or tampered digest)",
        ) from exc
    digests = _parse_digest(document, path / DIGEST_FILE)
    files = {name: _read(path / name, "missing") for name in SIGNED_FILES}
    for name, data in files.items():
        actual = hashlib.sha256(data).hexdigest()
        if not hmac.compare_digest(actual, digests[name]):
            raise ArtifactError(
                "digest_mismatch",
                f"{path / name}: SHA-256 {actual[:16]}... does not match the signed "
                f"{digests[name][:16]}... (file changed after signing)",
            )
    try:
        metadata = ModelMetadata.from_json(files[METADATA_FILE])
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ArtifactError(
            "metadata_invalid", f"{path / METADATA_FILE}: {where}: {first['msg']}"
        ) from exc
    if (metadata.model_name, metadata.model_version) != (path.parent.name, path.name):
        raise ArtifactError(
            "metadata_invalid",
            f"{path}: metadata says {metadata.model_name}/{metadata.model_version}, "
            "directory disagrees",
        )
    return VerifiedArtifact(
        path=path,
        metadata=metadata,
        model_bytes=files[MODEL_FILE],
        digest_sha256=hashlib.sha256(document).hexdigest(),
    )


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Numeric versions in numeric order, after them the others lexicographically."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def list_versions(model_dir: Path, name: str) -> list[str]:
    """The versions of ``name`` found in ``model_dir`` (signed or not), oldest first."""
    root = model_dir / name
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=version_sort_key)


def next_version(model_dir: Path, name: str) -> str:
    """One more than the highest numeric version of ``name`` (``1`` for the first)."""
    numeric = [int(v) for v in list_versions(model_dir, name) if v.isdigit()]
    return str(max(numeric, default=0) + 1)
