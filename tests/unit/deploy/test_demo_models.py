"""The demo's model cache: keyed by what the models depend on, never by the run's length;
built once, reused, installed into a run. Training here is a stand-in writer (the real
training is exercised by the scorer's tests and the demo integration test)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from services.demo.models import ModelCache


def _fake_train(calls: list[Path]) -> Callable[[Path, Path], None]:
    def train(models: Path, keys: Path) -> None:
        calls.append(models)
        (models / "fraud-gbt" / "1").mkdir(parents=True)
        (models / "fraud-gbt" / "1" / "model.onnx").write_bytes(b"onnx")
        keys.mkdir(parents=True)
        (keys / "signing.key").write_bytes(b"private")
        (keys / "signing.pub").write_bytes(b"public")

    return train


def test_key_follows_inputs_not_duration(tmp_path: Path) -> None:
    base = ModelCache(events=20_000, seed=2026, root=tmp_path)
    assert base.key == ModelCache(events=20_000, seed=2026, root=tmp_path).key
    assert base.key != ModelCache(events=20_000, seed=7, root=tmp_path).key
    assert base.key != ModelCache(events=30_000, seed=2026, root=tmp_path).key
    assert base.key != ModelCache(events=20_000, seed=2026, root=tmp_path, candidate=False).key
    inputs = base.inputs
    assert {"sources", "feature_set_hash", "seed", "events"} <= inputs.keys()
    assert base.path.is_relative_to(tmp_path)


def test_built_once_then_reused_and_installed(tmp_path: Path) -> None:
    cache = ModelCache(events=20_000, seed=2026, root=tmp_path / "cache")
    calls: list[Path] = []
    assert not cache.ready
    cache.build(_fake_train(calls))
    assert cache.ready and len(calls) == 1
    assert not list(cache.path.parent.glob(".building-*"))  # the scratch dir is gone

    run = tmp_path / "run"
    cache.install(run / "models", run / "keys")
    assert (run / "models" / "fraud-gbt" / "1" / "model.onnx").read_bytes() == b"onnx"
    assert (run / "keys" / "signing.key").stat().st_mode & 0o077 == 0


def test_failed_training_leaves_no_entry(tmp_path: Path) -> None:
    cache = ModelCache(events=20_000, seed=2026, root=tmp_path)

    def broken(models: Path, keys: Path) -> None:
        models.mkdir(parents=True)
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError):
        cache.build(broken)
    assert not cache.ready
    assert not list(cache.path.parent.glob(".building-*"))


def test_reference_own_for_short_runs_cached_for_long_ones(tmp_path: Path) -> None:
    cache = ModelCache(events=20_000, seed=2026, root=tmp_path)
    primary = tmp_path / "primary"
    primary.mkdir()
    own = {"features": {"amount": {"edges": []}}, "rows": 16_000}
    (primary / "metadata.json").write_text(json.dumps({"reference": own}))
    assert cache.reference_for(20_000, primary) == own  # no longer than the training set

    cache.path.mkdir(parents=True)
    assert not cache.has_reference(240_000)
    longer = {"features": {}, "rows": 50_000}
    (cache.path / "reference-events240000.json").write_text(json.dumps(longer))
    assert cache.has_reference(240_000)
    assert cache.reference_for(240_000, primary) == longer  # read back, not rebuilt
