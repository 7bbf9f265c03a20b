"""The scorer's pure core with real onnxruntime sessions: routes, fallbacks, breaker, canary."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest

from services.scorer.breaker import BreakerState
from services.scorer.processor import ScorerProcessor, ScoringPolicy
from services.scorer.registry import ModelRegistry
from services.scorer.routing import ModelRoutes, RouteEntry, RouteTable, canary_bucket
from services.scorer.rules import RulesScorer
from streamml.state import State
from tests.unit.scorer import modelkit

WEIGHTS = [0.8, -0.5, 0.3, 0.1]


class Clock:
    """A monotonic clock the test moves; it advances ``tick`` on every read."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 1000.0
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def registry(keys, model_dir, public_key) -> ModelRegistry:
    key = keys[0]
    modelkit.publish(model_dir, key, "good", "1", modelkit.logistic_model(WEIGHTS))
    modelkit.publish(model_dir, key, "good", "2", modelkit.logistic_model([0.1, 0.2, 0.3, 0.4]))
    modelkit.publish(model_dir, key, "backup", "1", modelkit.logistic_model([0.5, 0, 0, 0], -1))
    modelkit.publish(model_dir, key, "raises", "1", modelkit.raising_model())
    modelkit.publish(model_dir, key, "nan", "1", modelkit.nan_model())
    modelkit.publish(model_dir, key, "slow", "1", modelkit.slow_model())
    modelkit.publish(
        model_dir, key, "otherfs", "1", modelkit.logistic_model(WEIGHTS),
        fs_hash=modelkit.OTHER_HASH,
    )  # fmt: skip
    return ModelRegistry(model_dir, public_key, warmup_rows=2)


def _processor(
    table: RouteTable,
    *,
    policy: ScoringPolicy | None = None,
    monotonic: Callable[[], float] | None = None,
    rules: RulesScorer | None = None,
) -> tuple[ScorerProcessor, ModelRoutes]:
    routes = ModelRoutes(table)
    proc = ScorerProcessor(
        routes,
        predictions_topic="predictions",
        shadow_topic="predictions.shadow",
        control_topic="model.control",
        rules=rules or RulesScorer.from_config(["f0>1:0.9"], default_score=0.1),
        policy=policy or ScoringPolicy(latency_budget_ms=10_000),
        clock=lambda: 1_800_000_000_000,
        monotonic=monotonic or Clock(),
    )
    return proc, routes


def _entry(registry: ModelRegistry, name: str, version: str = "1", revision: int = -1):
    return RouteEntry(registry.load(name, version), revision)


def _values(result, topic="predictions"):
    return [o.value for o in result.outputs if o.topic == topic]


def test_scores_equal_onnxruntime_on_the_same_matrix(registry, model_dir) -> None:
    proc, _ = _processor(RouteTable(primary=_entry(registry, "good")))
    records = modelkit.batch(64, seed=3)
    result = proc.process(records, State([]))
    preds = _values(result)
    assert [p["event_id"] for p in preds] == [r.value["event_id"] for r in records]
    matrix = np.array([r.value["values"] for r in records], dtype=np.float32)
    session = ort.InferenceSession(str(model_dir / "good" / "1" / "model.onnx"))
    direct = session.run(None, {"features": matrix})[0][:, 0].astype(np.float64)
    assert [p["score"] for p in preds] == direct.tolist()
    assert {p["route"] for p in preds} == {"primary"}
    assert all(p["fallback_reason"] is None for p in preds)
    assert all(p["decision"] == (p["score"] >= 0.5) for p in preds)
    first = preds[0]
    assert first["model_name"] == "good" and first["model_version"] == "1"
    assert first["scored_at"] == 1_800_000_000_000
    assert first["features_computed_at"] == records[0].value["computed_at"]
    assert first["segments"] == {"country": "DE"}
    assert all(o.key == o.value["entity_id"] for o in result.outputs)


def test_invalid_vectors_are_rejected_and_the_rest_scored(registry) -> None:
    proc, _ = _processor(RouteTable(primary=_entry(registry, "good")))
    good = modelkit.batch(3)
    short = modelkit.vector_record(100, [1.0, 2.0])
    nan = modelkit.vector_record(101, [1.0, math.nan, 0.0, 0.0])
    inf = modelkit.vector_record(102, [1.0, 0.0, math.inf, 0.0])
    huge = modelkit.vector_record(103, [1e300, 0.0, 0.0, 0.0])  # finite, not float32
    empty = modelkit.vector_record(104, [])
    names = modelkit.vector_record(105, [1.0, 0, 0, 0], names=["f1", "f0", "f2", "f3"])
    result = proc.process([*good, short, nan, inf, huge, empty, names], State([]))
    reasons = {r.record.value["event_id"]: r.reason for r in result.rejections}
    assert reasons == {
        "ev-100": "validation.length",
        "ev-101": "validation.non_finite",
        "ev-102": "validation.non_finite",
        "ev-103": "validation.non_finite",
        "ev-104": "validation.empty",
        "ev-105": "validation.names",
    }
    assert [p["event_id"] for p in _values(result)] == ["ev-0", "ev-1", "ev-2"]


@pytest.mark.parametrize(("bad", "reason"), [("raises", "error"), ("nan", "non_finite")])
def test_failing_primary_falls_back_for_the_batch(registry, bad, reason) -> None:
    proc, _ = _processor(
        RouteTable(primary=_entry(registry, bad), fallback=_entry(registry, "backup"))
    )
    records = [modelkit.vector_record(i, [5.0, 0.0, 0.0, float(i)]) for i in range(8)]
    preds = _values(proc.process(records, State([])))
    assert len(preds) == 8
    assert {p["route"] for p in preds} == {"fallback"}
    assert {p["fallback_reason"] for p in preds} == {reason}
    assert {p["model_name"] for p in preds} == {"backup"}
    assert all(0.0 <= p["score"] <= 1.0 for p in preds)


def test_too_slow_primary_falls_back(registry) -> None:
    """The real slow model against a 1 ms budget; no time is asserted, only the route."""
    proc, _ = _processor(
        RouteTable(primary=_entry(registry, "slow"), fallback=_entry(registry, "backup")),
        policy=ScoringPolicy(latency_budget_ms=1.0),
        monotonic=time.perf_counter,  # real time for the real slow model
    )
    preds = _values(proc.process(modelkit.batch(32), State([])))
    assert {(p["route"], p["fallback_reason"]) for p in preds} == {("fallback", "latency_budget")}


def test_latency_budget_with_injected_clock(registry) -> None:
    # Every clock read advances 0.1 s: each model run "takes" 100 ms > 50 ms budget.
    proc, _ = _processor(
        RouteTable(primary=_entry(registry, "good"), fallback=_entry(registry, "backup")),
        policy=ScoringPolicy(latency_budget_ms=50),
        monotonic=Clock(tick=0.1),
    )
    preds = _values(proc.process(modelkit.batch(4), State([])))
    assert {p["route"] for p in preds} == {"fallback"}  # the fallback has no budget
    assert preds[0]["latency_ms"] == pytest.approx(100.0)


def test_everything_fails_then_rules_answer(registry) -> None:
    proc, _ = _processor(
        RouteTable(primary=_entry(registry, "raises"), fallback=_entry(registry, "nan")),
        rules=RulesScorer.from_config(["f0>1:0.9"], default_score=0.1, threshold=0.5),
    )
    records = [modelkit.vector_record(0, [5.0, 0, 0, 0]), modelkit.vector_record(1, [0.5, 0, 0, 0])]
    preds = _values(proc.process(records, State([])))
    assert [p["route"] for p in preds] == ["rules", "rules"]
    assert [p["score"] for p in preds] == [0.9, 0.1]
    assert [p["decision"] for p in preds] == [True, False]
    assert preds[0]["fallback_reason"] == "error;fallback_non_finite"
    assert preds[0]["model_name"] == "rules" and preds[0]["model_version"].startswith("rules-")


def test_breaker_opens_after_n_failures_and_closes_after_cooldown(registry) -> None:
    clock = Clock()
    proc, _routes = _processor(
        RouteTable(primary=_entry(registry, "raises"), fallback=_entry(registry, "backup")),
        policy=ScoringPolicy(
            latency_budget_ms=10_000, breaker_failure_threshold=3, breaker_cooldown_s=30
        ),
        monotonic=clock,
    )
    bad = [modelkit.vector_record(0, [5.0, 0, 0, 0])]  # x0=5 makes the model raise
    ok = [modelkit.vector_record(1, [1.0, 0, 0, 0])]  # x0=1 is a valid lookup
    for _ in range(3):
        assert _values(proc.process(bad, State([])))[0]["fallback_reason"] == "error"
    assert proc.breaker.state is BreakerState.OPEN
    # Open: the primary is skipped even for an input it could score.
    pred = _values(proc.process(ok, State([])))[0]
    assert (pred["route"], pred["fallback_reason"]) == ("fallback", "breaker_open")
    # Cool-down elapses: half-open; the probe fails -> open again.
    clock.now += 31
    pred = _values(proc.process(bad, State([])))[0]
    assert pred["fallback_reason"] == "error"
    assert proc.breaker.state is BreakerState.OPEN
    assert _values(proc.process(ok, State([])))[0]["fallback_reason"] == "breaker_open"
    # Next cool-down; the probe succeeds -> closed, primary serves again.
    clock.now += 31
    pred = _values(proc.process(ok, State([])))[0]
    assert (pred["route"], pred["fallback_reason"]) == ("primary", None)
    assert proc.breaker.state is BreakerState.CLOSED


def test_feature_set_mismatch_skips_the_model(registry) -> None:
    proc, _ = _processor(
        RouteTable(primary=_entry(registry, "otherfs"), fallback=_entry(registry, "backup"))
    )
    preds = _values(proc.process(modelkit.batch(3), State([])))
    assert {(p["route"], p["fallback_reason"]) for p in preds} == {
        ("fallback", "feature_set_mismatch")
    }
    # A vector of the other feature set goes to the primary.
    other = modelkit.batch(2, start=10, fs_hash=modelkit.OTHER_HASH)
    assert {p["route"] for p in _values(proc.process(other, State([])))} == {"primary"}


def test_shadow_goes_only_to_the_shadow_topic(registry) -> None:
    proc, _ = _processor(
        RouteTable(primary=_entry(registry, "good"), shadow=_entry(registry, "good", "2"))
    )
    records = modelkit.batch(50)
    result = proc.process(records, State([]))
    served = _values(result, "predictions")
    shadow = _values(result, "predictions.shadow")
    assert len(served) == len(shadow) == 50
    assert {p["route"] for p in served} == {"primary"}
    assert {(p["model_name"], p["model_version"]) for p in served} == {("good", "1")}
    assert {p["route"] for p in shadow} == {"shadow"}
    assert {p["model_version"] for p in shadow} == {"2"}
    assert {o.topic for o in result.outputs} == {"predictions", "predictions.shadow"}


def test_failing_shadow_never_affects_serving(registry) -> None:
    proc, _ = _processor(
        RouteTable(primary=_entry(registry, "good"), shadow=_entry(registry, "nan"))
    )
    result = proc.process(modelkit.batch(5), State([]))
    assert {o.topic for o in result.outputs} == {"predictions"}
    assert {p["route"] for p in _values(result)} == {"primary"}


def test_canary_share_is_deterministic_and_within_bounds(registry) -> None:
    share = 0.2
    proc, _ = _processor(
        RouteTable(
            primary=_entry(registry, "good"),
            canary=_entry(registry, "good", "2", revision=7),
            canary_share=share,
        )
    )
    n = 4000
    records = [
        modelkit.vector_record(i, [0.1, 0.2, 0.3, 0.4], entity=f"card-{i}") for i in range(n)
    ]
    preds = _values(proc.process(records, State([])))
    canary = [p for p in preds if p["route"] == "canary"]
    assert {p["model_version"] for p in canary} == {"2"}
    # Binomial(4000, 0.2): sd = 25.3; 5 sd either side cannot fail by chance in practice.
    assert abs(len(canary) - n * share) < 5 * math.sqrt(n * share * (1 - share))
    # Deterministic per entity: exactly the entities whose bucket is under the share.
    expected = {f"card-{i}" for i in range(n) if canary_bucket(f"card-{i}".encode()) < share}
    assert {p["entity_id"] for p in canary} == expected
    assert all(p["route"] == "primary" for p in preds if p["entity_id"] not in expected)


def test_failing_canary_is_served_by_primary_then_rolled_back(registry) -> None:
    proc, routes = _processor(
        RouteTable(
            primary=_entry(registry, "good"),
            canary=_entry(registry, "nan", revision=12),
            canary_share=0.5,
        ),
        policy=ScoringPolicy(
            latency_budget_ms=10_000, canary_min_records=20, canary_max_error_rate=0.05
        ),
    )
    records = [modelkit.vector_record(i, [0.1, 0, 0, 0], entity=f"c{i}") for i in range(100)]
    result = proc.process(records, State([]))
    preds = _values(result)
    assert len(preds) == 100  # nothing lost: canary failures go to the primary
    rerouted = [p for p in preds if p["fallback_reason"] == "canary_non_finite"]
    assert rerouted and {p["route"] for p in rerouted} == {"primary"}
    control = _values(result, "model.control")
    assert len(control) == 1
    assert control[0]["role"] == "canary" and control[0]["action"] == "clear"
    assert control[0]["issued_by"].startswith("scorer:auto-rollback")
    assert "error_rate" in control[0]["reason"]
    # Rolled back here at once, even before the clear comes back through model.control.
    later = _values(proc.process(modelkit.batch(20, start=200), State([])))
    assert {p["route"] for p in later} == {"primary"}
    assert all(p["fallback_reason"] is None for p in later)
    # An operator promoting a canary again (new control offset) is honoured.
    _, table = routes.current()
    routes.publish(table.with_role("canary", _entry(registry, "good", "2", revision=40)))
    again = _values(proc.process(records, State([])))
    assert "canary" in {p["route"] for p in again}


def test_slow_canary_is_rolled_back_on_latency(registry) -> None:
    proc, _ = _processor(
        RouteTable(
            primary=_entry(registry, "good"),
            canary=_entry(registry, "good", "2", revision=3),
            canary_share=1.0,
        ),
        policy=ScoringPolicy(
            latency_budget_ms=10_000, canary_max_latency_ms=5, canary_min_records=10
        ),
        monotonic=Clock(tick=0.01),  # each run "takes" 10 ms
    )
    result = proc.process(modelkit.batch(30), State([]))
    assert {p["route"] for p in _values(result)} == {"canary"}  # served, but slow
    (control,) = _values(result, "model.control")
    assert control["reason"].startswith("automatic rollback: ")
    assert "ms" in control["reason"]


def test_swap_between_batches_and_readiness(registry) -> None:
    proc, routes = _processor(RouteTable())
    assert not proc.is_ready()
    preds = _values(proc.process(modelkit.batch(2), State([])))
    assert {(p["route"], p["fallback_reason"]) for p in preds} == {("rules", "no_primary")}
    routes.publish(RouteTable(primary=_entry(registry, "good")))
    assert proc.is_ready()
    assert {p["model_version"] for p in _values(proc.process(modelkit.batch(2), State([])))} == {
        "1"
    }
    _, table = routes.current()
    routes.publish(table.with_role("primary", _entry(registry, "good", "2", revision=5)))
    assert {p["model_version"] for p in _values(proc.process(modelkit.batch(2), State([])))} == {
        "2"
    }
    assert proc.observed_feature_set_hash == modelkit.FS_HASH


def test_replay_headers_are_carried(registry) -> None:
    proc, _ = _processor(RouteTable(primary=_entry(registry, "good")))
    record = modelkit.vector_record(0, [0.0, 0, 0, 0])
    record = type(record)(**{**{f: getattr(record, f) for f in record.__slots__},
                             "headers": (("replay.id", b"r1"), ("other", b"x"))})  # fmt: skip
    (out,) = proc.process([record], State([])).outputs
    assert out.headers == (("replay.id", b"r1"),)
