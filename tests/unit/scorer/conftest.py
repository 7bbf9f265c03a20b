from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.scorer.artifact import generate_keypair, load_private_key, load_public_key


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    """A fresh signing key and the path of its public key."""
    private_path, public_path = generate_keypair(tmp_path / "keys")
    return load_private_key(private_path), public_path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def public_key(keys: tuple[Ed25519PrivateKey, Path]):  # type: ignore[no-untyped-def]
    return load_public_key(keys[1])
