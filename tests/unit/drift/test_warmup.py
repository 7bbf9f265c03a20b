"""Warm-up: history features are not compared before their window can be full."""

from __future__ import annotations

from typing import Any

import numpy as np

from services.drift.reference import Reference, reference_from_mapping, synthetic_reference
from tests.unit.drift.harness import CHANNELS, Harness, make_processor, stream_records

NAMES = ["f0", "f1", "f2", "f3"]
WARMUP_MS = 100_000  # 10,000 records at the harness's 10 ms a record


def _reference(warmup_ms: int) -> Reference:
    rng = np.random.default_rng(7)
    columns = {name: rng.normal(size=20_000) for name in NAMES}
    document: dict[str, Any] = synthetic_reference(
        columns, score=rng.beta(1, 12, size=20_000), categories={"channel": CHANNELS},
        threshold=0.3, seed=7,
    )  # fmt: skip
    distributions = document.get("reference", document)
    distributions["features"]["f1"]["warmup_ms"] = warmup_ms  # f1: a feature of the history
    return reference_from_mapping(document)


def _cold_start(rows: int) -> np.ndarray:
    """f1 starts low, as a window count does while the histories fill, then is warm."""
    values = np.random.default_rng(303).normal(size=(rows, 4))
    values[:8_000, 1] -= 1.5
    return values


def _opened(reference: Reference, values: np.ndarray) -> list[str]:
    harness = Harness(make_processor(reference))
    harness.feed_all(stream_records(values, NAMES), batch=500)
    return [a["feature"] for a in harness.opened()]


def test_a_cold_history_feature_opens_no_episode_during_its_warm_up() -> None:
    values = _cold_start(30_000)
    assert "f1" in _opened(_reference(0), values)  # without warm-up: a false episode
    assert _opened(_reference(WARMUP_MS), values) == []


def test_a_history_feature_drifting_after_its_warm_up_opens_an_episode() -> None:
    values = _cold_start(40_000)
    values[25_000:, 1] += 1.0
    assert _opened(_reference(WARMUP_MS), values) == ["f1"]


def test_features_of_the_event_alone_are_compared_at_once() -> None:
    values = np.random.default_rng(404).normal(size=(20_000, 4))
    values[3_000:, 2] += 1.0  # f2 has no warm-up: detected inside f1's warm-up
    assert _opened(_reference(WARMUP_MS), values) == ["f2"]


def test_a_flag_column_is_judged_by_its_window_tests_not_by_sequential_detectors() -> None:
    rng = np.random.default_rng(505)
    columns = {name: rng.normal(size=20_000) for name in NAMES}
    columns["f1"] = (rng.random(20_000) < 0.05).astype(float)  # a one-hot column
    reference = reference_from_mapping(
        synthetic_reference(columns, categories={"channel": CHANNELS}, seed=5)
    )
    assert reference.numeric["f1"].distinct_values == 2
    values = rng.normal(size=(30_000, 4))
    values[:, 1] = (rng.random(30_000) < 0.05).astype(float)
    values[15_000:, 1] = (rng.random(15_000) < 0.4).astype(float)  # the category's share jumps
    harness = Harness(make_processor(reference))
    harness.feed_all(stream_records(values, NAMES), batch=500)
    opened = harness.opened()
    assert [a["feature"] for a in opened] == ["f1"]
    assert opened[0]["detector"] not in {"adwin", "page_hinkley", "page_hinkley_spread"}
    assert all(hit["feature"] != "f1" for r in harness.reports for hit in r["detections"])


def test_records_before_monitor_from_are_read_and_not_monitored() -> None:
    """A monitor deployed beside a cold-starting stream watches it from ``monitor_from_ms``
    on: what changed before then opens nothing, a change after it still does."""
    values = np.random.default_rng(606).normal(size=(40_000, 4))
    values[:8_000, 2] += 1.5  # the first 80 s of event time look nothing like the reference
    reference = _reference(0)

    def opened(monitor_from_ms: int, data: np.ndarray) -> list[str]:
        harness = Harness(make_processor(reference, monitor_from_ms=monitor_from_ms))
        harness.feed_all(stream_records(data, NAMES), batch=500)
        return [a["feature"] for a in harness.opened()]

    assert opened(0, values) == ["f2"]
    assert opened(100_000, values) == []
    drifted = values.copy()
    drifted[25_000:, 3] += 1.0
    assert opened(100_000, drifted) == ["f3"]
