"""Freshness detectors of the drift service: a partition that stops while the others flow
(stale_partition) and a value that stops changing (stuck_value), both on drift.alerts
with signal "freshness"."""

from __future__ import annotations

import numpy as np

from services.drift.episodes import WindowTestParams
from tests.unit.drift.harness import Harness, make_processor, make_reference, stream_records

NAMES = ["f0", "f1", "f2", "f3"]
STALE_ON = WindowTestParams(stale_windows=5)  # stale_partition is off by default


def freshness(harness: Harness) -> list[tuple[str, str, str]]:
    return [
        (a["state"], a["feature"], a["detector"])
        for a in harness.alerts
        if a["signal"] == "freshness"
    ]


def test_a_partition_that_stops_while_the_other_flows_opens_a_stale_partition_alert() -> None:
    rng = np.random.default_rng(31)
    records = stream_records(rng.normal(size=(24_000, 4)), NAMES, partitions=2)
    # partition 1's events stop a third of the way in; partition 0 carries on, unchanged
    records = [r for r in records if r.partition == 0 or r.offset < 4_000]
    harness = Harness(make_processor(make_reference(), partitions=2, tests=STALE_ON), 2)
    harness.feed_all(records)
    assert freshness(harness) == [("open", "partition 1", "stale_partition")]
    alert = next(a for a in harness.alerts if a["signal"] == "freshness")
    assert alert["statistic"] >= alert["threshold"] == 5.0
    # nothing else fired: the data of the flowing partition did not change
    assert [a for a in harness.alerts if a["signal"] == "drift"] == []


def test_a_partition_that_resumes_resolves_its_alert() -> None:
    rng = np.random.default_rng(32)
    records = stream_records(rng.normal(size=(30_000, 4)), NAMES, partitions=2)
    p0 = [r for r in records if r.partition == 0]
    p1 = [r for r in records if r.partition == 1]
    # partition 1 pauses for 8 windows (500 records each), then catches up and keeps step
    order = [r for pair in zip(p0[:3000], p1[:3000], strict=True) for r in pair]
    order += p0[3000:7000] + p1[3000:7000]
    order += [r for pair in zip(p0[7000:], p1[7000:], strict=False) for r in pair]
    harness = Harness(make_processor(make_reference(), partitions=2, tests=STALE_ON), 2)
    harness.feed_all(order)
    states = [s for s, feature, _ in freshness(harness) if feature == "partition 1"]
    assert states == ["open", "resolved"]


def test_partitions_moving_at_different_paces_are_not_stale() -> None:
    rng = np.random.default_rng(33)
    records = stream_records(rng.normal(size=(24_000, 4)), NAMES, partitions=2)
    p0 = [r for r in records if r.partition == 0]
    p1 = [r for r in records if r.partition == 1]
    # partition 1 starts two windows late, then moves with partition 0 the whole time (a
    # partition silent for stale_windows from the start is stale: see the test below)
    lag = 1_000
    order = p0[:lag] + [r for pair in zip(p0[lag:], p1, strict=False) for r in pair]
    harness = Harness(make_processor(make_reference(), partitions=2, tests=STALE_ON), 2)
    harness.feed_all(order)
    assert freshness(harness) == []


def test_a_value_stuck_at_one_level_opens_a_stuck_value_alert() -> None:
    rng = np.random.default_rng(34)
    values = rng.normal(size=(20_000, 4))
    values[10_000:, 1] = 0.0  # the field stopped changing (at a plausible value: the mean)
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(stream_records(values, NAMES))
    # (the spread detector may open the episode as a warning first: one episode, raised)
    stuck = [a for a in harness.alerts if a["detector"] == "stuck_value"]
    assert stuck and stuck[0]["state"] in ("open", "updated")
    assert stuck[0]["feature"] == "f1" and stuck[0]["severity"] == "alert"
    assert stuck[0]["signal"] == "freshness" and stuck[0]["statistic"] == 0.0
    assert all(a["feature"] == "f1" for a in harness.opened())


def test_stuck_value_can_be_switched_off_and_a_varying_stream_never_fires_it() -> None:
    rng = np.random.default_rng(35)
    values = rng.normal(size=(20_000, 4))
    values[10_000:, 1] = 0.0
    off = Harness(make_processor(make_reference(), tests=WindowTestParams(stuck_std_ratio=0)))
    off.feed_all(stream_records(values, NAMES))
    assert not [a for a in off.alerts if a["detector"] == "stuck_value"]
    clean = Harness(make_processor(make_reference()))
    clean.feed_all(stream_records(rng.normal(size=(20_000, 4)), NAMES))
    assert not [a for a in clean.alerts if a["detector"] == "stuck_value"]


def test_a_partition_that_stops_before_its_first_window_closes_is_stale_too() -> None:
    rng = np.random.default_rng(36)
    records = stream_records(rng.normal(size=(16_000, 4)), NAMES, partitions=2)
    # partition 1 sends a few records of the first window, then nothing
    records = [r for r in records if r.partition == 0 or r.offset < 100]
    harness = Harness(make_processor(make_reference(), partitions=2, tests=STALE_ON), 2)
    harness.feed_all(records)
    assert freshness(harness) == [("open", "partition 1", "stale_partition")]


def test_predictions_of_the_monitored_model_that_stop_while_features_flow_are_stale() -> None:
    from streamml.processor import Record

    rng = np.random.default_rng(37)
    features = stream_records(rng.normal(size=(12_000, 4)), NAMES)

    def prediction(i: int, version: str) -> Record:
        score = float(rng.beta(1, 12))
        return Record(
            topic="predictions", partition=0, offset=i, timestamp_ms=i * 10, key=b"k",
            value={"event_time": i * 10, "model_name": "synthetic", "model_version": version,
                   "score": score, "decision": score >= 0.3, "route": "primary"},
            headers=(), schema="Prediction",
        )  # fmt: skip

    # another version is promoted half-way: the reference's model no longer scores anything
    interleaved = []
    for i, record in enumerate(features):
        interleaved += [record, prediction(i, "1" if i < 6_000 else "2")]
    harness = Harness(make_processor(make_reference(), tests=STALE_ON))
    harness.feed_all(interleaved)
    assert freshness(harness) == [("open", "partition 0", "stale_partition")]
    alert = next(a for a in harness.alerts if a["signal"] == "freshness")
    assert alert["details"]["stream"] == "predictions"


def test_stale_partition_is_off_by_default_so_a_backlog_read_unevenly_is_no_alert() -> None:
    rng = np.random.default_rng(34)
    records = stream_records(rng.normal(size=(24_000, 4)), NAMES, partitions=2)
    # a first start on a backlog: partition 0's whole backlog is read before partition 1's
    order = [r for r in records if r.partition == 0] + [r for r in records if r.partition == 1]
    default = Harness(make_processor(make_reference(), partitions=2), 2)
    default.feed_all(order)
    assert freshness(default) == []
    # the same input with the detector on: the unread partition looks stale
    on = Harness(make_processor(make_reference(), partitions=2, tests=STALE_ON), 2)
    on.feed_all(order)
    assert ("open", "partition 1", "stale_partition") in freshness(on)
