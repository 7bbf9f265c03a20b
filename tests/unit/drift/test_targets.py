"""Issue 14's targets, pinned on fixed seeds of benchmarks/drift_quality.py's scenarios.

Each test runs the processor built as the service builds it (``build_processor`` with
default settings) on a few of the benchmark's seeded streams and checks the targets
table's bound for each seed (the benchmark reports the medians over 20 seeds). Delays
are in records from the change point to the record the episode opened on.
"""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from benchmarks.drift_quality import (
    DRIFTED,
    Stream,
    category_share,
    make_reference,
    mean_shift,
    opened_at,
    run_service,
    score_shift,
    variance_x2,
)
from services.drift.metrics import DriftMetrics
from services.drift.reference import Reference, reference_from_mapping, synthetic_reference
from services.drift.stats import proportion_z_two_sample
from tests.unit.drift.harness import Harness, feature_record, make_processor

WINDOW_MS = 60_000


@pytest.fixture(scope="module")
def reference() -> Reference:
    return make_reference()


def _delays(
    make: object, reference: Reference, seeds: range, per_window: int, partitions: int, horizon: int
) -> list[tuple[list[str], int]]:
    """Per seed: features of the episodes opened after the change, and the first one's delay."""
    out = []
    step_ms = WINDOW_MS / per_window
    for seed in seeds:
        stream: Stream = make(np.random.default_rng(10_000 + seed), horizon)  # type: ignore[operator]
        assert stream.change is not None
        opened = run_service(stream, reference, partitions, step_ms, batch=500)
        at = [(a["feature"], opened_at(a, step_ms)) for a in opened]
        assert all(t >= stream.change for _, t in at), f"seed {seed}: false episode {at}"
        out.append(([f for f, _ in at], at[0][1] - stream.change if at else -1))
    return out


@pytest.mark.parametrize("partitions", [1, 4])
def test_one_sd_shift_opens_one_episode_within_600_records(
    reference: Reference, partitions: int
) -> None:
    runs = _delays(mean_shift(1.0), reference, range(3), 1_000, partitions, 1_500)
    for features, delay in runs:
        assert features == [DRIFTED]
        assert 0 <= delay <= 600
    assert sorted(d for _, d in runs)[1] <= 300  # the median of the three


def test_doubled_variance_is_found_within_1500_records(reference: Reference) -> None:
    for features, delay in _delays(variance_x2, reference, range(3), 1_000, 1, 3_000):
        assert features[:1] == [DRIFTED]
        assert 0 <= delay <= 1_500


@pytest.mark.parametrize("per_window", [1_000, 5_000])
def test_ten_point_category_share_change_is_found_within_2000_records(
    reference: Reference, per_window: int
) -> None:
    """At 5,000 records per window the first full window ends up to 10,000 records after
    the change: the sliding chi-square (the last 1,000 records) opens the episode."""
    for features, delay in _delays(category_share, reference, range(3), per_window, 1, 3_000):
        assert features == ["channel"]
        assert 0 <= delay <= 2_000


def test_score_only_shift_is_one_episode(reference: Reference) -> None:
    for features, delay in _delays(score_shift, reference, range(3), 1_000, 1, 3_000):
        assert features == ["score"]
        assert 0 <= delay <= 1_000


@pytest.mark.parametrize(("per_window", "partitions"), [(1_000, 1), (60_000, 4)])
def test_stationary_stream_opens_no_episode(
    reference: Reference, per_window: int, partitions: int
) -> None:
    rng = np.random.default_rng(77)
    n = 100_000
    names = ["pos", "ecommerce", "atm", "moto"]
    channels = [names[k] for k in rng.choice(4, size=n, p=[0.5, 0.35, 0.1, 0.05])]
    stream = Stream(rng.normal(size=(n, 20)), channels, None, None)
    opened = run_service(stream, reference, partitions, WINDOW_MS / per_window, batch=1_000)
    assert opened == []


def test_positive_share_test_holds_its_level_at_high_volume() -> None:
    """60,000 predictions per window against a 2,000-score reference sample: the
    reference share's own error dominates, so a test taking it as exact fires for many
    references; the two-sample test does not."""
    exact_fires = two_sample_fires = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        sample_share = float(np.mean(rng.beta(2, 5, size=2_000) >= 0.35))
        live = rng.beta(2, 5, size=60_000) >= 0.35  # share ~0.42
        positives = int(live.sum())
        exact = proportion_z_two_sample(positives, len(live), sample_share, 0)
        two_sample = proportion_z_two_sample(positives, len(live), sample_share, 2_000)
        exact_fires += abs(exact) >= 5 and abs(positives / len(live) - sample_share) >= 0.01
        two_sample_fires += abs(two_sample) >= 5
    assert exact_fires >= 1  # the old test is wrong at this volume (can fail)
    assert two_sample_fires == 0


def test_low_traffic_windows_are_carried_not_skipped() -> None:
    """400 records per window (< 500): each window is carried into the next, counted and
    logged, and a 20-point category change is still found."""
    rng = np.random.default_rng(5)
    document = synthetic_reference(
        {"f0": rng.normal(size=20_000)}, categories={"channel": {"a": 0.5, "b": 0.5}},
        threshold=None, seed=5,
    )  # fmt: skip
    document["reference"]["rows"] = 20_000
    reference = reference_from_mapping(document)
    metrics = DriftMetrics(CollectorRegistry())
    harness = Harness(make_processor(reference, window_ms=60_000, metrics=metrics))
    n, change = 8_000, 4_000
    share = np.where(np.arange(n) < change, 0.5, 0.7)
    channels = np.where(rng.random(n) < share, "a", "b")
    values = rng.normal(size=n)
    records = [
        feature_record(0, i, i * 150, ["f0"], [values[i]], str(channels[i])) for i in range(n)
    ]  # 150 ms apart: 400 records per 60 s window
    harness.feed_all(records, batch=200)
    carried = metrics.windows_carried.labels("features")._value.get()
    assert carried >= 8  # every other window at least was too small alone
    assert metrics.windows_closed._value.get() >= 8
    opened = harness.opened()
    assert [a["feature"] for a in opened] == ["channel"]
    # the carried windows' own chi-square test fires (confirming the sliding test's open)
    tested = [a for a in harness.alerts if a["detector"] == "chi2"]
    assert tested and int(tested[0]["details"]["window_records"]) >= 500
