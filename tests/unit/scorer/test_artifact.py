"""Signed model versions: a version verifies only as it was signed, with the right key."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.scorer.artifact import (
    DIGEST_FILE,
    METADATA_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    ArtifactError,
    SigningKeyError,
    generate_keypair,
    load_private_key,
    load_public_key,
    next_version,
    verify_version,
)
from services.scorer.registry import ModelRegistry
from tests.unit.scorer import modelkit


def _signed(model_dir: Path, key: Ed25519PrivateKey) -> Path:
    return modelkit.publish(
        model_dir, key, "m", "1", modelkit.logistic_model([1, 0, 0, 0]),
        reference=modelkit.tiny_reference(),
    )  # fmt: skip


def test_signed_version_verifies_and_round_trips_metadata(keys, model_dir, public_key) -> None:
    path = _signed(model_dir, keys[0])
    artifact = verify_version(path, public_key)
    assert artifact.metadata.model_name == "m"
    assert artifact.metadata.reference is not None
    assert artifact.metadata.reference.categories["country"]["DE"] == 0.7
    assert artifact.model_bytes == (path / MODEL_FILE).read_bytes()
    # The digest file is sha256sum-compatible: "<hex>  <name>" per signed file.
    lines = (path / DIGEST_FILE).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == [MODEL_FILE, METADATA_FILE]


def test_one_flipped_byte_in_the_model_is_refused(keys, model_dir, public_key) -> None:
    path = _signed(model_dir, keys[0])
    data = bytearray((path / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as err:
        verify_version(path, public_key)
    assert err.value.reason == "digest_mismatch"
    assert MODEL_FILE in str(err.value)


def test_edited_metadata_is_refused(keys, model_dir, public_key) -> None:
    path = _signed(model_dir, keys[0])
    text = (path / METADATA_FILE).read_text().replace('"threshold": 0.5', '"threshold": 0.9')
    (path / METADATA_FILE).write_text(text)
    with pytest.raises(ArtifactError) as err:
        verify_version(path, public_key)
    assert err.value.reason == "digest_mismatch"


def test_re_digesting_a_tampered_model_breaks_the_signature(keys, model_dir, public_key) -> None:
    """An attacker who also rewrites digest.sha256 cannot re-sign it."""
    path = _signed(model_dir, keys[0])
    evil = modelkit.logistic_model([9, 9, 9, 9])
    (path / MODEL_FILE).write_bytes(evil)
    meta = (path / METADATA_FILE).read_bytes()
    (path / DIGEST_FILE).write_text(
        f"{hashlib.sha256(evil).hexdigest()}  {MODEL_FILE}\n"
        f"{hashlib.sha256(meta).hexdigest()}  {METADATA_FILE}\n"
    )
    with pytest.raises(ArtifactError) as err:
        verify_version(path, public_key)
    assert err.value.reason == "bad_signature"


def test_wrong_key_is_refused(keys, model_dir, tmp_path) -> None:
    path = _signed(model_dir, keys[0])
    _, other_public = generate_keypair(tmp_path / "other")
    with pytest.raises(ArtifactError) as err:
        verify_version(path, load_public_key(other_public))
    assert err.value.reason == "bad_signature"


@pytest.mark.parametrize("missing", [SIGNATURE_FILE, DIGEST_FILE])
def test_missing_signature_or_digest_is_unsigned(keys, model_dir, public_key, missing) -> None:
    path = _signed(model_dir, keys[0])
    (path / missing).unlink()
    with pytest.raises(ArtifactError) as err:
        verify_version(path, public_key)
    assert err.value.reason == "unsigned"


def test_missing_model_file_is_refused(keys, model_dir, public_key) -> None:
    path = _signed(model_dir, keys[0])
    (path / MODEL_FILE).unlink()
    with pytest.raises(ArtifactError) as err:
        verify_version(path, public_key)
    assert err.value.reason == "missing"


def test_versions_are_immutable(keys, model_dir) -> None:
    _signed(model_dir, keys[0])
    with pytest.raises(ArtifactError):
        _signed(model_dir, keys[0])
    assert next_version(model_dir, "m") == "2"


def test_private_key_is_0600_and_never_overwritten(tmp_path) -> None:
    private_path, _public_path = generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    with pytest.raises(SigningKeyError):
        generate_keypair(tmp_path / "k")
    os.chmod(private_path, 0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_private_key(private_path)
    with pytest.raises(SigningKeyError):
        load_public_key(private_path)  # a private key is not a public key


def test_registry_refuses_tampered_model_and_reuses_sessions(keys, model_dir, public_key) -> None:
    path = _signed(model_dir, keys[0])
    registry = ModelRegistry(model_dir, public_key)
    first = registry.load("m")  # latest
    assert registry.load("m", "1") is first  # same signed digest: same session
    (path / MODEL_FILE).write_bytes((path / MODEL_FILE).read_bytes() + b"\0")
    with pytest.raises(ArtifactError):
        registry.load("m", "1")
    with pytest.raises(ArtifactError) as err:
        registry.load("m", "../m")
    assert err.value.reason == "missing"


def test_unloadable_model_is_refused_at_load(keys, model_dir, public_key) -> None:
    """A signed model that onnxruntime cannot run fails its warm-up: refused before serving."""
    modelkit.publish(model_dir, keys[0], "bad", "1", modelkit.unrunnable_model())
    with pytest.raises(ArtifactError) as err:
        ModelRegistry(model_dir, public_key).load("bad", "1")
    assert err.value.reason == "load_failed"
