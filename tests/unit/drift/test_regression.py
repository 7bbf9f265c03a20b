"""Pinned regression scenarios: seeded synthetic streams with known change points."""

from __future__ import annotations

import numpy as np

from services.drift.detectors import DetectorParams
from services.drift.episodes import WindowTestParams
from services.drift.reference import reference_from_mapping, synthetic_reference
from streamml.processor import Record
from tests.unit.drift.harness import (
    CHANNELS,
    PREDICTIONS,
    Harness,
    channel_stream,
    make_processor,
    make_reference,
    stream_records,
)

NAMES = ["f0", "f1", "f2", "f3"]
CHANGE = 20_000


def test_abrupt_one_sd_shift_opens_an_episode_at_once_then_the_window_test_confirms() -> None:
    rng = np.random.default_rng(101)
    values = rng.normal(size=(30_000, 4))
    values[CHANGE:, 2] += 1.0
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(stream_records(values, NAMES), batch=100)

    opened = harness.opened()
    assert [a["feature"] for a in opened] == ["f2"]
    # opened by a streaming detector on the record that made it fire, not at window close
    assert opened[0]["detector"] in {"adwin", "page_hinkley"}
    assert opened[0]["window_start"] == opened[0]["window_end"]
    assert CHANGE * 10 < opened[0]["window_end"] <= (CHANGE + 300) * 10
    position = harness.alert_positions[harness.alerts.index(opened[0])]
    assert CHANGE < position <= CHANGE + 400  # in the micro-batch of that record
    # the closed window's tests confirm it in the same episode (severity alert)
    updated = [a for a in harness.alerts if a["state"] == "updated"]
    assert [(a["alert_id"], a["severity"]) for a in updated] == [(opened[0]["alert_id"], "alert")]
    assert float(updated[0]["details"]["window_mean"]) > 0.5


def test_gradual_drift_is_detected() -> None:
    rng = np.random.default_rng(202)
    values = rng.normal(size=(40_000, 4))
    ramp = np.clip((np.arange(40_000) - 10_000) / 20_000, 0, 1)  # 0 -> 1 sd over 20k records
    values[:, 1] += ramp
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(stream_records(values, NAMES), batch=250)

    opened = harness.opened()
    # at the threshold a slow drift may open, resolve and reopen: always f1 only
    assert {a["feature"] for a in opened} == {"f1"}
    position = harness.alert_positions[harness.alerts.index(opened[0])]
    assert 10_000 < position < 30_000


def test_stationary_200k_records_raise_no_alert() -> None:
    rng = np.random.default_rng(303)
    values = rng.normal(size=(200_000, 4))
    channels = channel_stream(rng, 200_000, CHANNELS)
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(stream_records(values, NAMES, channels=channels), batch=1_000)

    assert harness.alerts == []
    assert len(harness.reports) >= 390  # every window was closed and tested
    assert sum(len(r["detections"]) for r in harness.reports) == 0


def test_categorical_change_is_detected_by_the_categorical_test() -> None:
    rng = np.random.default_rng(404)
    n = 20_000
    values = rng.normal(size=(n, 4))
    shifted = {"pos": 0.3, "ecommerce": 0.6, "atm": 0.05, "moto": 0.05}
    channels = channel_stream(rng, 10_000, CHANNELS) + channel_stream(rng, 10_000, shifted)
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(stream_records(values, NAMES, channels=channels))

    opened = harness.opened()
    # the sliding chi-square opens it (a share moved by more than its floor), at once...
    assert [(a["feature"], a["detector"]) for a in opened] == [("channel", "chi2_sliding")]
    assert opened[0]["statistic"] >= opened[0]["threshold"] == 0.06
    position = harness.alert_positions[harness.alerts.index(opened[0])]
    assert 10_000 < position <= 11_500
    # ...and the window's test confirms it (severity alert)
    updated = [a for a in harness.alerts if a["state"] == "updated"]
    assert [(a["feature"], a["detector"]) for a in updated] == [("channel", "psi")]
    assert updated[0]["statistic"] >= 0.1
    assert updated[0]["p_value"] is not None and updated[0]["p_value"] < 1e-6


def test_one_drift_across_four_partitions_gives_one_alert() -> None:
    rng = np.random.default_rng(505)
    values = rng.normal(size=(40_000, 4))
    values[CHANGE:, 0] += 1.0
    harness = Harness(make_processor(make_reference(), partitions=4), partitions=4)
    harness.feed_all(stream_records(values, NAMES, partitions=4), batch=400)

    opened = harness.opened()
    assert len(opened) == 1
    assert opened[0]["feature"] == "f0"
    # opened by the first partition whose detector fired; confirmed on the merged window
    assert opened[0]["first_offset"] is not None
    updated = next(a for a in harness.alerts if a["state"] == "updated")
    assert updated["details"]["partitions"] == "0,1,2,3"
    assert updated["first_offset"] is None  # several partitions: offsets are in details
    # every partition's ADWIN saw it, still one episode
    fired = {r["source_partition"] for r in harness.reports for d in r["detections"]}
    assert fired == {0, 1, 2, 3}


def test_partitions_reporting_out_of_step_give_the_same_alerts() -> None:
    rng = np.random.default_rng(606)
    values = rng.normal(size=(24_000, 4))
    values[12_000:, 3] -= 1.0
    records = stream_records(values, NAMES, partitions=2)
    even = Harness(make_processor(make_reference(), partitions=2), partitions=2)
    even.feed_all(records, batch=300)
    skewed = Harness(make_processor(make_reference(), partitions=2), partitions=2)
    p0 = [r for r in records if r.partition == 0]
    p1 = [r for r in records if r.partition == 1]
    # partition 1 runs two windows behind partition 0 the whole time
    lag = 1_000
    order = p0[:lag] + [r for pair in zip(p0[lag:], p1, strict=False) for r in pair] + p1[-lag:]
    skewed.feed_all(order, batch=300)
    assert [a for a in skewed.alerts] == [a for a in even.alerts]
    assert len(even.opened()) == 1


def test_episode_resolves_after_clean_windows() -> None:
    rng = np.random.default_rng(707)
    values = rng.normal(size=(30_000, 4))
    values[10_000:15_000, 0] += 2.0
    tests = WindowTestParams(resolve_after_windows=3)
    harness = Harness(make_processor(make_reference(), tests=tests))
    harness.feed_all(stream_records(values, NAMES))

    states = [(a["state"], a["feature"]) for a in harness.alerts]
    assert states[0] == ("open", "f0")
    assert ("resolved", "f0") in states
    ids = {a["alert_id"] for a in harness.alerts if a["feature"] == "f0"}
    assert len(ids) == 1  # one episode, one id for open/updated/resolved
    resolved = next(a for a in harness.alerts if a["state"] == "resolved")
    assert "psi=" in resolved["details"]["peak"]
    # the resolving window's own PSI, under the warn threshold it is compared with
    assert resolved["detector"] == "psi"
    assert 0 < resolved["statistic"] < resolved["threshold"] == 0.1
    # resolved only after the shift ended, and no new episode afterwards
    assert harness.alert_positions[harness.alerts.index(resolved)] > 15_000
    assert len(harness.opened()) == 1


def test_missing_values_raise_the_missing_rate_test() -> None:
    rng = np.random.default_rng(909)
    values = rng.normal(size=(20_000, 4))
    holes = rng.random(10_000) < 0.2
    values[10_000:, 3][holes] = np.nan
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(stream_records(values, NAMES))
    opened = harness.opened()
    assert [(a["feature"], a["detector"]) for a in opened] == [("f3", "missing_rate")]
    assert 0.15 < opened[0]["statistic"] < 0.25


def _prediction(offset: int, score: float, threshold: float = 0.3) -> Record:
    return Record(
        topic=PREDICTIONS, partition=0, offset=offset, timestamp_ms=offset * 10, key=b"k",
        value={"event_time": offset * 10, "model_name": "synthetic", "model_version": "1",
               "score": score, "decision": score >= threshold, "route": "primary"},
        headers=(), schema="Prediction",
    )  # fmt: skip


def test_score_and_positive_share_shift_is_detected() -> None:
    rng = np.random.default_rng(1010)
    scores = np.r_[rng.beta(1, 12, size=10_000), rng.beta(2, 6, size=10_000)]
    harness = Harness(make_processor(make_reference()))
    harness.feed_all([_prediction(i, s) for i, s in enumerate(scores.tolist())])
    # one cause, one episode: the decision share is a function of the score
    assert [a["feature"] for a in harness.opened()] == ["score"]
    assert len({a["alert_id"] for a in harness.alerts}) == 1
    last = harness.alerts[-1]
    assert "positive_rate" in last["details"]["detectors"].split(",")
    assert "positive_rate=" in last["details"]["signals"]


def test_predictions_of_other_models_are_not_compared_with_this_reference() -> None:
    rng = np.random.default_rng(1111)
    harness = Harness(make_processor(make_reference()))
    records = []
    for i, s in enumerate(rng.beta(5, 2, size=5_000).tolist()):  # a very different model
        record = _prediction(i, s)
        value = dict(record.value, model_name="rules", model_version="0", route="rules")
        records.append(Record(record.topic, 0, i, 0, b"k", value, (), "Prediction"))
    harness.feed_all(records)
    assert harness.alerts == [] and harness.reports == []


def test_an_idle_partition_does_not_block_alerts_forever() -> None:
    rng = np.random.default_rng(1212)
    values = rng.normal(size=(20_000, 4))
    values[10_000:, 0] += 1.0
    records = stream_records(values, NAMES, partitions=2)
    # partition 1 goes silent a third of the way in; partition 0 carries on drifting
    records = [r for r in records if r.partition == 0 or r.offset < 3_000]
    tests = WindowTestParams(idle_windows=4, min_window_records=200, stale_windows=5)
    harness = Harness(make_processor(make_reference(), partitions=2, tests=tests), 2)
    harness.feed_all(records)
    opened = [a for a in harness.opened() if a["signal"] == "drift"]
    assert [a["feature"] for a in opened] == ["f0"]
    # and the silent partition is itself an alert (freshness), long before idle_windows
    assert [a["feature"] for a in harness.opened() if a["signal"] == "freshness"] == ["partition 1"]
    assert opened[0]["details"]["partitions"] == "0"
    assert opened[0]["first_offset"] is not None  # one partition: its offsets are the fields

    patient = Harness(make_processor(make_reference(), partitions=2), 2)  # default: 60 windows
    patient.feed_all(records)
    # the streaming detectors do not wait for the idle partition; the window tests do
    drift = [a for a in patient.alerts if a["signal"] == "drift"]
    assert [(a["state"], a["feature"]) for a in drift] == [("open", "f0")]
    assert drift[0]["detector"] in {"adwin", "page_hinkley"}


def test_vectors_with_mismatched_names_and_values_go_to_the_dlq() -> None:
    harness = Harness(make_processor(make_reference()))
    good = stream_records(np.zeros((2, 4)), NAMES)
    bad_value = dict(good[1].value, values=[0.0, 1.0])
    bad = Record(good[1].topic, 0, 1, 0, b"k", bad_value, (), "FeatureVector")
    unnamed = Record(good[1].topic, 0, 2, 0, b"k", dict(bad_value, names=[]), (), "FeatureVector")
    result = harness.processor.process([good[0], bad, unnamed], harness.state)
    assert [(r.record.offset, r.reason) for r in result.rejections] == [
        (1, "validation.shape"),
        (2, "validation.shape"),
    ]


def test_vectors_are_read_by_name_in_any_order_and_missing_names_count_as_missing() -> None:
    rng = np.random.default_rng(1313)
    values = rng.normal(size=(12_000, 4))
    reordered = ["f3", "f2", "f1", "f0"]
    records = stream_records(values[:, ::-1], reordered)
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(records)
    assert harness.alerts == []
    partial = stream_records(values[:, :3], NAMES[:3])  # f3 absent from every vector
    harness2 = Harness(make_processor(make_reference()))
    harness2.feed_all(partial)
    assert [(a["feature"], a["detector"]) for a in harness2.opened()] == [("f3", "missing_rate")]


def test_heavy_tailed_and_skewed_features_raise_no_false_alarm() -> None:
    # Detectors see the reference CDF of each value, not the raw value: amounts are lognormal.
    rng = np.random.default_rng(1414)

    def draw(n: int) -> np.ndarray:
        columns = [rng.lognormal(3, 1, n), rng.standard_t(3, n), rng.exponential(2.0, n)]
        return np.column_stack([*columns, rng.poisson(3, n).astype(float)])

    train = draw(50_000)
    reference = reference_from_mapping(
        synthetic_reference({name: train[:, i] for i, name in enumerate(NAMES)}, seed=3)
    )
    harness = Harness(make_processor(reference))
    harness.feed_all(stream_records(draw(150_000), NAMES), batch=1_000)
    assert harness.alerts == []
    assert sum(len(r["detections"]) for r in harness.reports) == 0


def test_escalation_within_an_episode_is_an_update_not_a_new_alert() -> None:
    rng = np.random.default_rng(202)
    values = rng.normal(size=(40_000, 4))
    values[:, 1] += np.clip((np.arange(40_000) - 10_000) / 20_000, 0, 1)
    window_tests_only = DetectorParams(adwin=False, page_hinkley=False, spread=False)
    harness = Harness(make_processor(make_reference(), detectors=window_tests_only))
    harness.feed_all(stream_records(values, NAMES))
    states = [(a["state"], a["severity"]) for a in harness.alerts]
    assert states == [("open", "warn"), ("updated", "alert")]
    assert len({a["alert_id"] for a in harness.alerts}) == 1


def test_one_corrupt_far_future_timestamp_does_not_derail_the_windows() -> None:
    rng = np.random.default_rng(1515)
    values = rng.normal(size=(20_000, 4))
    values[12_000:, 2] += 1.0
    clean = stream_records(values, NAMES)
    corrupt = list(clean)
    bad = corrupt[5_000]
    far = dict(bad.value, event_time=bad.value["event_time"] + 86_400_000)  # a day ahead
    corrupt[5_000] = Record(bad.topic, 0, bad.offset, 0, b"k", far, (), "FeatureVector")
    expected = Harness(make_processor(make_reference()))
    expected.feed_all(clean)
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(corrupt)
    assert [(a["feature"], a["state"], a["window_start"]) for a in harness.alerts] == [
        (a["feature"], a["state"], a["window_start"]) for a in expected.alerts
    ]
    assert sum(r["late_records"] for r in harness.reports) == 1
    assert max(r["window_end"] for r in harness.reports) < 20_000 * 10


def test_a_real_gap_in_traffic_moves_the_window_on() -> None:
    rng = np.random.default_rng(1616)
    values = rng.normal(size=(4_000, 4))
    records = stream_records(values, NAMES)
    gap_ms = 3 * 3_600_000  # three hours without traffic, then the stream goes on
    moved = [
        Record(r.topic, 0, r.offset, 0, b"k", dict(r.value, event_time=r.value["event_time"]
               + (gap_ms if r.offset >= 2_000 else 0)), (), "FeatureVector")
        for r in records
    ]  # fmt: skip
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(moved)
    late = [r["late_records"] for r in harness.reports]
    assert sum(late) == 19  # jump_confirm_records - 1 records counted before it moved on
    assert harness.reports[-1]["window_start"] >= gap_ms
