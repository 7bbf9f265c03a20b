"""Streaming firings of several partitions are taken in event-time order (issue 17): the
alerts are the same whatever order the partitions are read in, and a firing still does
not wait for its window to close."""

from __future__ import annotations

from functools import cache

import numpy as np

from services.drift.episodes import WindowTestParams
from streamml.processor import Record
from tests.unit.drift.harness import Harness, make_processor, make_reference, stream_records

NAMES = ["f0", "f1", "f2", "f3"]
PARTITIONS = 4
CHANGE = 10_000
# Read out of step by whole partitions here: nothing is let go as idle.
PATIENT = WindowTestParams(idle_windows=1_000, detection_idle_windows=1_000)


@cache
def _records() -> tuple[Record, ...]:
    rng = np.random.default_rng(1717)
    values = rng.normal(size=(22_000, 4))
    values[CHANGE:, 1] += 1.0
    values[CHANGE + 6_000 :, 3] -= 1.0
    return tuple(stream_records(values, NAMES, partitions=PARTITIONS))


@cache
def _live() -> Harness:
    """Every partition in step, in micro-batches of 200 records."""
    return _run(list(_records()), batch=200)


def _run(order: list[Record], batch: int) -> Harness:
    harness = Harness(make_processor(make_reference(), partitions=PARTITIONS, tests=PATIENT),
                      PARTITIONS)  # fmt: skip
    harness.feed_all(order, batch=batch)
    return harness


def test_any_read_order_gives_the_same_alerts_streaming_opens_included() -> None:
    records = _records()
    parts = [[r for r in records if r.partition == p] for p in range(PARTITIONS)]
    live = _live()
    # a backlog read one partition after another, the last partition first
    backlog = _run([r for p in reversed(range(PARTITIONS)) for r in parts[p]], batch=500)
    # partition 2 runs far behind the others, in other batch sizes
    lagging = [r for p in (0, 1, 3) for r in parts[p][:2_000]]
    lagging += [
        r for i in range(2_000, len(parts[0])) for p in (0, 1, 3) for r in parts[p][i : i + 1]
    ]
    lagging += parts[2]
    behind = _run(lagging, batch=333)

    opened = live.opened()
    assert {a["feature"] for a in opened} >= {"f1", "f3"}
    assert any(a["detector"] in {"adwin", "page_hinkley"} for a in opened)
    assert backlog.alerts == live.alerts
    assert behind.alerts == live.alerts


def test_the_earliest_firing_of_all_partitions_opens_the_episode() -> None:
    live = _live()
    first = next(a for a in live.opened() if a["feature"] == "f1")
    assert first["detector"] in {"adwin", "page_hinkley"}
    # every partition's own firings on f1, from its own reports: none is earlier
    firings = [d for r in live.reports if r["kind"] == "detection" for d in r["detections"]
               if d["feature"] == "f1"]  # fmt: skip
    assert min(d["event_time"] for d in firings) == first["window_end"]


def test_a_firing_waits_for_the_other_partitions_next_batch_not_for_its_window() -> None:
    live = _live()
    first = next(a for a in live.opened() if a["feature"] == "f1")
    position = live.alert_positions[live.alerts.index(first)]
    fired_at = int(first["window_end"]) // 10  # record i has event time i * 10 ms
    # 4 partitions in batches of 200 records: the others read past it within a batch or two
    assert fired_at < position <= fired_at + 400  # a window is 500 records (5 s)
