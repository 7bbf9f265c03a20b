"""Replayed records: counted in windows of their own event time, each original once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.drift.replay import CountedSources
from streamml.processor import Record
from tests.unit.drift.harness import (
    FEATURES,
    Harness,
    feature_record,
    make_processor,
    make_reference,
)

NAMES = ["f0", "f1", "f2", "f3"]
STEP_MS = 10  # 500 records per 5 s window
LIVE = 40_000
REPLAY_AT = 30_000  # live position the replay starts at (one replayed record per live one)
REPLAYED = 4_000  # event times 100 s..140 s: windows 20-27, long before the live time
REPLAY_T0 = 100_000


def _source(i: int, run: str = "r1") -> tuple[tuple[str, bytes], ...]:
    return (("replay.id", run.encode()), ("replay.source", f"features.archive/0/{i}".encode()))


def _stream(
    *, seed: int = 5, replays: int = 1, shift: float = 1.0, same_topic: bool = False
) -> list[Record]:
    """A stationary live stream on partition 0 with ``replays`` copies of the same
    drifted (f0 + ``shift`` sd) past records interleaved from live position REPLAY_AT."""
    rng = np.random.default_rng(seed)
    live = rng.normal(size=(LIVE, 4))
    past = rng.normal(size=(REPLAYED, 4))
    past[:, 0] += shift
    channels = ["pos", "ecommerce", "atm", "moto"]
    live_channels = rng.choice(4, size=LIVE, p=[0.5, 0.35, 0.1, 0.05])
    past_channels = rng.choice(4, size=REPLAYED, p=[0.5, 0.35, 0.1, 0.05])
    records: list[Record] = []
    offset = 0
    copies = [(run, i) for run in range(replays) for i in range(REPLAYED)]
    for i in range(LIVE):
        records.append(feature_record(0, offset, i * STEP_MS, NAMES, live[i].tolist(),
                                      channels[live_channels[i]]))  # fmt: skip
        offset += 1
        k = i - REPLAY_AT
        if 0 <= k < len(copies):
            run, j = copies[k]
            headers = (
                (("replay.id", b"r"), ("replay.source", f"{FEATURES}/0/{j}".encode()))
                if same_topic
                else _source(j, f"r{run}")
            )
            records.append(feature_record(0, offset, REPLAY_T0 + j * STEP_MS, NAMES,
                                          past[j].tolist(), channels[past_channels[j]],
                                          headers))  # fmt: skip
            offset += 1
    return records


def _records_counted(harness: Harness, kind: str) -> int:
    return sum(int(r["records"]) for r in harness.reports if r["kind"] == kind)


def test_a_drift_confined_to_replayed_records_is_alerted_in_their_own_windows() -> None:
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(_stream())

    opened = harness.opened()
    assert [(a["feature"], a["details"].get("replayed")) for a in opened] == [("f0", "true")]
    alert = opened[0]
    assert alert["alert_id"] == "features.f0.replay.20"  # the first replayed window
    # attributed to the replayed records' own event time, not to the live time
    assert REPLAY_T0 <= alert["window_start"] <= alert["window_end"] < REPLAY_T0 + 5_000
    assert alert["detector"] in {"psi", "ks"}
    assert float(alert["details"]["window_mean"]) > 0.5
    # the replayed period was tested: the episode resolved, and nothing else opened
    states = [(a["alert_id"], a["state"]) for a in harness.alerts]
    assert states[-1] == ("features.f0.replay.20", "resolved")
    # never mixed into the live windows: they hold exactly the live records
    assert _records_counted(harness, "window") == LIVE - 500  # the last window stays open
    assert _records_counted(harness, "replay") == REPLAYED
    assert {int(r["window_index"]) for r in harness.reports if r["kind"] == "replay"} == set(
        range(20, 28)
    )


def test_a_second_replay_of_the_same_records_is_not_counted_again() -> None:
    once = Harness(make_processor(make_reference()))
    once.feed_all(_stream())
    twice = Harness(make_processor(make_reference()))
    twice.feed_all(_stream(replays=2))

    assert _records_counted(twice, "replay") == REPLAYED
    assert [a["alert_id"] for a in twice.opened()] == [a["alert_id"] for a in once.opened()]
    assert _replay_view(twice.alerts) == _replay_view(once.alerts)


def test_a_replay_of_the_input_topic_itself_is_not_counted_again() -> None:
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(_stream(same_topic=True))  # copies of records monitored live
    assert _records_counted(harness, "replay") == 0
    assert harness.alerts == []


def test_replayed_records_like_the_reference_open_nothing() -> None:
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(_stream(shift=0.0))
    assert _records_counted(harness, "replay") == REPLAYED
    assert harness.alerts == []


@pytest.mark.parametrize("mode", ["skip", "current_window"])
def test_the_other_replay_modes(mode: str) -> None:
    harness = Harness(make_processor(make_reference(), replayed=mode))
    harness.feed_all(_stream())
    assert _records_counted(harness, "replay") == 0
    if mode == "skip":
        assert harness.alerts == []
        assert _records_counted(harness, "window") == LIVE - 500
    else:  # counted in the open live window: the drift shows at the live time
        opened = harness.opened()
        assert [a["feature"] for a in opened] == ["f0"]
        assert "replayed" not in opened[0]["details"]
        # ...in the live window open when they arrived (window 60), not in their own
        assert int(opened[0]["alert_id"].rsplit(".", 1)[1]) >= REPLAY_AT * STEP_MS // 5_000


def test_replay_state_survives_a_restart_mid_replay() -> None:
    records = _stream()
    whole = Harness(make_processor(make_reference()))
    whole.feed_all(records)

    first = Harness(make_processor(make_reference()))
    cut = REPLAY_AT + 3_000  # replay windows held in stage 1 and pending in stage 2
    first.feed_all(records[:cut])
    # a new process: the same committed state, nothing cached
    restarted = Harness(make_processor(make_reference()))
    restarted.state = first.state
    restarted.windows_offset = first.windows_offset
    restarted.feed_all(records[cut:])
    assert _replay_view(first.alerts + restarted.alerts) == _replay_view(whole.alerts)
    assert _records_counted(first, "replay") + _records_counted(restarted, "replay") == REPLAYED


def test_counted_sources_merge_into_intervals_and_stay_bounded() -> None:
    counted = CountedSources(max_intervals=3)
    assert all(counted.add("t/0", o) for o in [5, 7, 6, 4, 8])
    assert counted.intervals == {"t/0": [[4, 8]]}
    assert not counted.add("t/0", 6)
    assert counted.add("t/1", 6)
    for o in (20, 30, 40):
        counted.add("t/0", o)
    assert sum(len(v) for v in counted.intervals.values()) == 3
    assert counted.forgotten == 2
    again = CountedSources(max_intervals=3)
    again.load(counted.to_dict())
    assert again.intervals == counted.intervals and again.forgotten == 2


def _replay_view(alerts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (a["alert_id"], a["state"], a["detector"], a["statistic"], a["window_start"],
         a["window_end"], a["records_seen"])
        for a in alerts
    ]  # fmt: skip
