"""Stage 1 for replayed records: windows of their own event time, each record counted once.

An operator replay (``streamml replay``) or a dead-letter redrive puts records back on
an input topic long after their event time. Counted into the partition's open live
window they would mix another period into it (a false alarm, or a real drift of the
replayed period diluted into the present). Instead :class:`ReplayWindows` keeps, per
(stream, partition), a separate set of window sketches keyed by each replayed record's
own event-time window (the same counts as a live window, no streaming detectors: those
are sequential in arrival order, and the replayed period is history). A replay window is
sent to stage 2 as a ``kind="replay"`` report once the replay moved two windows past it
(replayed records come in source-offset order, so roughly in event-time order), or once
the live stream moved ``idle_windows`` windows on without a replayed record (the replay
ended). Stage 2 merges those reports across partitions and tests them like live windows
(see :mod:`services.drift.episodes`); their alerts say ``replayed``.

Counted once: a replayed record is identified by its ``replay.source``
(``topic/partition/offset`` of the original). The sources already counted are kept as
offset intervals per source partition (a replay copies contiguous ranges, so a few
intervals cover millions of records); a second replay of the same range is skipped
(``replay_duplicate``). A copy of this very input topic is a copy of a record the service
already monitored live when it read that offset, so it is skipped too. A record without a
``replay.source`` (a redrive) cannot be recognised again and is counted.

Bounded: at most ``max_windows`` replay windows per partition (the oldest is sent early
beyond that) and ``max_intervals`` counted intervals (the lowest offsets are forgotten
first, counted in ``forgotten``).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from services.drift.detectors import DetectorParams
from services.drift.monitor import Rows, StreamMonitor
from services.drift.reference import CategoricalReference, NumericReference

REPLAY = "replay"


class CountedSources:
    """Offsets of replayed originals already counted, as sorted disjoint intervals."""

    def __init__(self, max_intervals: int) -> None:
        self.max_intervals = max_intervals
        self.intervals: dict[str, list[list[int]]] = {}
        self.forgotten = 0

    def add(self, source: str, offset: int) -> bool:
        """Record ``offset`` of ``source`` as counted; False when it already was."""
        spans = self.intervals.setdefault(source, [])
        at = bisect.bisect_right(spans, offset, key=lambda span: span[0]) - 1
        if at >= 0 and spans[at][0] <= offset <= spans[at][1]:
            return False
        if at >= 0 and spans[at][1] == offset - 1:
            spans[at][1] = offset
            if at + 1 < len(spans) and spans[at + 1][0] == offset + 1:
                spans[at][1] = spans[at + 1][1]
                del spans[at + 1]
        elif at + 1 < len(spans) and spans[at + 1][0] == offset + 1:
            spans[at + 1][0] = offset
        else:
            spans.insert(at + 1, [offset, offset])
            self._bound()
        return True

    def _bound(self) -> None:
        while sum(len(s) for s in self.intervals.values()) > self.max_intervals:
            source = max(self.intervals, key=lambda k: len(self.intervals[k]))
            del self.intervals[source][0]
            self.forgotten += 1

    def to_dict(self) -> dict[str, Any]:
        return {"intervals": self.intervals, "forgotten": self.forgotten}

    def load(self, state: Mapping[str, Any]) -> None:
        self.intervals = {k: [list(map(int, s)) for s in v] for k, v in state["intervals"].items()}
        self.forgotten = int(state.get("forgotten", 0))


class ReplayWindows:
    """Replayed records of one (stream, partition), in windows of their own event time."""

    def __init__(
        self,
        *,
        stream: str,
        partition: int,
        window_ms: int,
        numeric: Sequence[NumericReference],
        categorical: Sequence[CategoricalReference],
        idle_windows: int = 2,
        max_windows: int = 120,
        max_intervals: int = 10_000,
    ) -> None:
        self.stream = stream
        self.partition = partition
        self.window_ms = window_ms
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.idle_windows = idle_windows
        self.max_windows = max_windows
        self.windows: dict[int, StreamMonitor] = {}
        self.counted = CountedSources(max_intervals)
        self.newest = -1  # the newest replay window seen
        self.live_at = -1  # the live window when the last replayed record arrived
        self.sent_early = 0

    def _monitor(self) -> StreamMonitor:
        return StreamMonitor(stream=self.stream, partition=self.partition,
                             window_ms=self.window_ms, numeric=self.numeric,
                             categorical=self.categorical, params={},
                             default_params=DetectorParams(), run_detectors=False,
                             max_window_jump=1 << 40)  # fmt: skip

    def first_time(self, source: tuple[str, int, int] | None) -> bool:
        """Whether a replayed record with this origin is counted (not seen before)."""
        if source is None:
            return True
        topic, partition, offset = source
        return self.counted.add(f"{topic}/{partition}", offset)

    def observe(
        self, rows: Rows, live_window: int | None, source_partitions: int, reference: str
    ) -> list[dict[str, Any]]:
        """Count replayed rows in their own windows; return the reports of windows done."""
        index = rows.event_time // self.window_ms
        for window in np.unique(index).tolist():
            mask = np.flatnonzero(index == window)
            part = Rows(rows.event_time[mask], rows.offset[mask], rows.values[mask],
                        rows.categories[mask],
                        None if rows.decisions is None else rows.decisions[mask])  # fmt: skip
            monitor = self.windows.get(int(window))
            if monitor is None:
                monitor = self.windows[int(window)] = self._monitor()
            monitor.observe(part, source_partitions, reference)
            self.newest = max(self.newest, int(window))
        if len(rows):
            self.live_at = -1 if live_window is None else live_window
        done = [w for w in self.windows if w <= self.newest - 2]
        while len(self.windows) - len(done) > self.max_windows:
            early = min(w for w in self.windows if w not in done)
            done.append(early)
            self.sent_early += 1
        return self._send(done, source_partitions, reference)

    def tick(
        self, live_window: int | None, source_partitions: int, reference: str
    ) -> list[dict[str, Any]]:
        """The live stream moved on: once it is ``idle_windows`` past the last replayed
        record, the replay ended and every replay window still held is sent."""
        if not self.windows or live_window is None or self.live_at < 0:
            return []
        if live_window < self.live_at + self.idle_windows:
            return []
        return self._send(list(self.windows), source_partitions, reference)

    def _send(
        self, windows: list[int], source_partitions: int, reference: str
    ) -> list[dict[str, Any]]:
        reports = []
        for window in sorted(windows):
            monitor = self.windows.pop(window)
            report = monitor.report(source_partitions, reference)
            report["kind"] = REPLAY
            reports.append(report)
        return reports

    # -- explicit state ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": {str(w): m.to_dict() for w, m in self.windows.items()},
            "counted": self.counted.to_dict(),
            "newest": self.newest,
            "live_at": self.live_at,
            "sent_early": self.sent_early,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        self.windows = {}
        for key, doc in state["windows"].items():
            monitor = self._monitor()
            monitor.load(doc, detectors=False)
            self.windows[int(key)] = monitor
        self.counted.load(state["counted"])
        self.newest = int(state["newest"])
        self.live_at = int(state["live_at"])
        self.sent_early = int(state.get("sent_early", 0))
