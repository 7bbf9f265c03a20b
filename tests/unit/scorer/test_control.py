"""Applying model.control instructions: verified swaps, refusals that keep serving."""

from __future__ import annotations

import pytest

from services.scorer import metrics
from services.scorer.artifact import MODEL_FILE
from services.scorer.control import ControlApplier, check_instruction, control_record
from services.scorer.registry import ModelRegistry
from services.scorer.routing import ModelRoutes
from tests.unit.scorer import modelkit


def _promote(role: str, name: str, version: str, share: float = 0.0) -> dict:
    return control_record(
        role, "promote", model_name=name, model_version=version, canary_share=share,
        issued_at_ms=1, issued_by="test",
    )  # fmt: skip


def _refused(role: str, reason: str) -> float:
    return metrics.MODEL_REFUSED.labels(role, reason)._value.get()


@pytest.fixture
def setup(keys, model_dir, public_key):
    key = keys[0]
    for version in ("1", "2", "3"):
        modelkit.publish(model_dir, key, "m", version, modelkit.logistic_model([1, 2, 3, 4]))
    modelkit.publish(
        model_dir, key, "other", "1", modelkit.logistic_model([1, 2, 3, 4]),
        fs_hash=modelkit.OTHER_HASH,
    )  # fmt: skip
    routes = ModelRoutes()
    expected: list[str | None] = [None]
    applier = ControlApplier(
        ModelRegistry(model_dir, public_key, warmup_rows=1), routes,
        expected_feature_set_hash=lambda: expected[0],
    )  # fmt: skip
    return applier, routes, model_dir, expected


def test_promote_swaps_the_role_with_its_revision(setup) -> None:
    applier, routes, _, _ = setup
    assert applier.apply(_promote("primary", "m", "1"), 10) == "applied"
    assert applier.apply(_promote("canary", "m", "2", 0.25), 11) == "applied"
    generation, table = routes.current()
    assert generation == 2
    assert table.primary.model.label == "m/1" and table.primary.revision == 10
    assert table.canary.model.label == "m/2" and table.canary_share == 0.25
    assert applier.apply(control_record(
        "canary", "clear", model_name=None, model_version=None, issued_at_ms=2, issued_by="t"
    ), 12) == "applied"  # fmt: skip
    assert routes.current()[1].canary is None


def test_tampered_version_is_refused_and_the_current_one_kept(setup) -> None:
    applier, routes, model_dir, _ = setup
    applier.apply(_promote("primary", "m", "1"), 1)
    path = model_dir / "m" / "2" / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    before = _refused("primary", "digest_mismatch")
    assert applier.apply(_promote("primary", "m", "2"), 2) == "refused"
    assert routes.current()[1].primary.model.label == "m/1"
    assert _refused("primary", "digest_mismatch") == before + 1


def test_unsigned_and_missing_versions_are_refused(setup) -> None:
    applier, routes, model_dir, _ = setup
    applier.apply(_promote("primary", "m", "1"), 1)
    (model_dir / "m" / "3" / "digest.sha256.sig").unlink()
    assert applier.apply(_promote("primary", "m", "3"), 2) == "refused"
    assert applier.apply(_promote("primary", "m", "99"), 3) == "refused"
    assert routes.current()[1].primary.model.label == "m/1"


def test_mismatched_feature_set_is_refused(setup) -> None:
    applier, routes, _, expected = setup
    expected[0] = modelkit.FS_HASH  # what the incoming vectors carry
    applier.apply(_promote("primary", "m", "1"), 1)
    before = _refused("primary", "feature_set_mismatch")
    assert applier.apply(_promote("primary", "other", "1"), 2) == "refused"
    assert routes.current()[1].primary.model.label == "m/1"
    assert _refused("primary", "feature_set_mismatch") == before + 1


def test_invalid_instructions_change_nothing(setup) -> None:
    applier, routes, _, _ = setup
    clear_primary = control_record(
        "primary", "clear", model_name=None, model_version=None, issued_at_ms=1, issued_by="t"
    )
    assert applier.apply(clear_primary, 1) == "invalid"
    assert applier.apply({"role": "boss", "action": "promote"}, 2) == "invalid"
    assert check_instruction(_promote("canary", "m", "1", share=0.0)) is not None
    assert routes.current()[0] == 0


def test_bootstrap_prefers_control_and_falls_back_to_settings(setup) -> None:
    applier, routes, model_dir, _ = setup
    (model_dir / "m" / "3" / MODEL_FILE).write_bytes(b"not onnx")
    applier.bootstrap(
        {"primary": ("m", None), "fallback": ("m", "1"), "shadow": (None, None)},
        {
            "primary": (5, _promote("primary", "m", "3")),
            "shadow": (6, _promote("shadow", "m", "2")),
        },
        canary_share=0.0,
    )
    _, table = routes.current()
    # control's m/3 is tampered -> the configured "latest" (also m/3) is refused too -> none
    assert table.primary is None
    assert table.fallback.model.label == "m/1" and table.fallback.revision == -1
    assert table.shadow.model.label == "m/2" and table.shadow.revision == 6


def test_rollback_record_remembers_the_previous_version() -> None:
    first = _promote("primary", "m", "1")
    second = control_record(
        "primary", "promote", model_name="m", model_version="2", issued_at_ms=2,
        issued_by="t", previous=first,
    )  # fmt: skip
    assert (second["previous_model_name"], second["previous_model_version"]) == ("m", "1")


def test_same_version_again_only_moves_the_revision(setup) -> None:
    applier, routes, _, _ = setup
    applier.apply(_promote("primary", "m", "1"), 1)
    _, table = routes.current()
    assert applier.apply(_promote("primary", "m", "1"), 9) == "unchanged"
    _, after = routes.current()
    assert after.primary.model is table.primary.model and after.primary.revision == 9


def test_settings_roles_become_instructions(setup) -> None:
    applier, _, _, _ = setup
    roles = applier.bootstrap({"primary": ("m", "2"), "fallback": ("m", "1")}, {}, canary_share=0)
    assert roles == ["primary", "fallback"]
    records = applier.settings_instructions(roles, issued_at_ms=5, issued_by="scorer:settings:a")
    assert [(r["role"], r["model_version"], r["action"]) for r in records] == [
        ("primary", "2", "promote"),
        ("fallback", "1", "promote"),
    ]
    assert all(check_instruction(r) is None for r in records)
