"""Breaker, canary monitor, rules, metadata and the doctests of the scorer modules."""

from __future__ import annotations

import doctest

import pytest

from services.scorer import breaker, metadata, routing, rules
from services.scorer.breaker import BreakerState, CircuitBreaker
from services.scorer.metadata import bin_counts, category_frequencies, numeric_reference
from services.scorer.routing import CanaryMonitor
from services.scorer.rules import RulesScorer
from streamml.errors import ConfigError


@pytest.mark.parametrize("module", [breaker, metadata, routing, rules])
def test_doctests(module) -> None:
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0


def test_breaker_transitions_are_reported() -> None:
    now = [0.0]
    seen = []
    b = CircuitBreaker(
        "p", failure_threshold=2, cooldown_s=5, clock=lambda: now[0],
        on_transition=lambda name, old, new, why: seen.append((old.value, new.value)),
    )  # fmt: skip
    b.record_failure("error")
    b.record_success()  # success resets the count: failures must be consecutive
    b.record_failure("error")
    assert b.state is BreakerState.CLOSED
    b.record_failure("error")
    assert b.state is BreakerState.OPEN and not b.allow()
    now[0] = 4.9
    assert not b.allow()
    now[0] = 5.0
    assert b.allow()
    b.record_success()
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_canary_monitor_waits_for_min_records_and_slides() -> None:
    m = CanaryMonitor(
        max_error_rate=0.1, max_latency_ms=50, max_slow_rate=0.5, min_records=100,
        window_records=200,
    )  # fmt: skip
    m.record(50, failed=True, latency_ms=1)
    assert m.breach() is None  # too few records to judge
    m.record(60, failed=False, latency_ms=1)
    bound, _ = m.breach() or ("", "")
    assert bound == "error_rate"
    for _ in range(10):
        m.record(50, failed=False, latency_ms=1)
    assert m.breach() is None  # the failed batch slid out of the window
    for _ in range(4):
        m.record(50, failed=False, latency_ms=80)
    assert (m.breach() or ("",))[0] == "latency"


def test_rules_parse_and_refuse_bad_config() -> None:
    scorer = RulesScorer.from_config(["amount >= 100 : 0.7", "age<18:0.95"], default_score=0.0)
    assert scorer.score({"amount": 100.0, "age": 30.0}) == 0.7
    assert scorer.score({"amount": 100.0, "age": 16.0}) == 0.95
    assert RulesScorer.from_config([]).version != scorer.version
    for bad in ["amount 100", "amount>1:2.0", ">1:0.5"]:
        with pytest.raises(ConfigError):
            RulesScorer.from_config([bad])


def test_numeric_reference_bins_match_counts() -> None:
    values = [float(i % 37) for i in range(1000)]
    ref = numeric_reference(values, bins=10, sample_size=100, seed=1)
    assert sum(ref.counts) == 1000
    assert ref.counts == bin_counts(ref.edges, values)
    assert len(ref.sample) == 100
    # A constant column has no cut points: one bin with everything.
    const = numeric_reference([3.0] * 10)
    assert const.edges == [] and const.counts == [10]


def test_category_frequencies_pool_the_tail() -> None:
    rows = [{"country": "DE"}] * 6 + [{"country": "FR"}] * 3 + [{"country": "NL"}]
    freqs = category_frequencies(rows, max_categories=2)
    assert freqs == {"country": {"DE": 0.6, "FR": 0.3, "__other__": pytest.approx(0.1)}}


def test_tune_gc_sets_only_the_young_threshold() -> None:
    import gc

    from services.scorer.settings import ScorerSettings
    from streamml.service import tune_gc

    assert ScorerSettings.model_fields["gc_young_threshold"].default == 20_000
    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before
        tune_gc(12_345)
        assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        gc.set_threshold(*before)
