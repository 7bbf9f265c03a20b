"""Stage 1, per input partition: window sketches and streaming detectors.

A :class:`StreamMonitor` holds, for one partition of one stream (``features`` or
``predictions``), the open event-time tumbling window as mergeable counts (PSI bins, KS
grid bins, category buckets, missing values, positive decisions, sums) and one
:class:`~services.drift.detectors.StreamDetectors` per monitored value. When a record of
a later window arrives, the open window is closed into a *window report* (the
``DriftWindowReport`` schema) that stage 2 merges across partitions; the report also
lists what river's detectors flagged in that window. A record of an earlier window than
the open one (out of order) is counted into the open window and in ``late_records``; so
is a record more than ``max_window_jump`` windows ahead (a corrupt timestamp), unless
``jump_confirm`` such records arrive in a row (the stream really moved on).

A streaming detector's firing is sent at once as a ``detection`` report, and every batch
ends with a ``progress`` report: both carry the partition's *mark* in ``window_end``, the
largest event time counted in the open window so far (up to the firing record for a
detection). Marks only grow along a partition, and a firing's mark is a function of the
records up to it (not of batch sizes), so stage 2 can order firings of all partitions by
mark and take one only once every other partition's mark has passed it.

Everything is vectorised per micro-batch except the detectors, which river updates one
value at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.drift import stats
from services.drift.detectors import DetectorParams, StreamDetectors
from services.drift.reference import CategoricalReference, NumericReference

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

FEATURES = "features"
PREDICTIONS = "predictions"
WINDOW = "window"
DETECTION = "detection"
PROGRESS = "progress"
"""Report kind that only says how far a partition has read (see :meth:`StreamMonitor.observe`)."""

_THRESHOLD: dict[str, Callable[[DetectorParams], float]] = {
    "adwin": lambda p: p.adwin_delta,
    "page_hinkley": lambda p: p.ph_threshold,
    "page_hinkley_spread": lambda p: p.spread_threshold,
    "kswin": lambda p: p.kswin_alpha,
}
CHI2_SLIDING = "chi2_sliding"


@dataclass(frozen=True)
class Rows:
    """One partition's records of one stream in a micro-batch, as columns.

    ``values[:, j]`` is monitored value ``j`` (NaN when missing or invalid);
    ``categories[:, k]`` is the bucket of categorical attribute ``k`` (-1 when missing);
    ``decisions`` is 1/0 per record (predictions only).
    """

    event_time: IntArray
    offset: IntArray
    values: FloatArray
    categories: IntArray
    decisions: IntArray | None = None

    def __len__(self) -> int:
        return len(self.event_time)

    def slice(self, start: int, stop: int) -> Rows:
        return Rows(
            self.event_time[start:stop],
            self.offset[start:stop],
            self.values[start:stop],
            self.categories[start:stop],
            None if self.decisions is None else self.decisions[start:stop],
        )


class StreamMonitor:
    """Open window + detectors of one (stream, partition)."""

    def __init__(
        self,
        *,
        stream: str,
        partition: int,
        window_ms: int,
        numeric: Sequence[NumericReference],
        categorical: Sequence[CategoricalReference],
        params: Mapping[str, DetectorParams],
        default_params: DetectorParams,
        run_detectors: bool = True,
        max_window_jump: int = 60,
        jump_confirm: int = 20,
    ) -> None:
        self.stream = stream
        self.partition = partition
        self.window_ms = window_ms
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self._params = [params.get(ref.name, default_params) for ref in self.numeric]
        self.detectors: list[StreamDetectors | None] = [
            StreamDetectors(p, seed=partition)
            if run_detectors and (len(ref.pit_scores) or ref.std > 0) and not _two_valued(ref)
            else None
            for p, ref in zip(self._params, self.numeric, strict=True)
        ]
        self.max_window_jump = max_window_jump
        self.jump_confirm = max(1, jump_confirm)
        # Sliding chi-square of the categorical attributes: blocks of `category_step`
        # records, the last `category_window // category_step` of them tested together.
        self._cat_params = default_params
        self._cat_blocks = (
            default_params.category_window // default_params.category_step
            if run_detectors and self.categorical and default_params.category_window
            else 0
        )
        self.cat_fill = 0
        self.cat_block = np.zeros((len(self.categorical), _width(self.categorical)), np.int64)
        self.cat_ring: list[IntArray] = []
        self.seen = 0
        self.far_streak = 0
        self.window: int | None = None
        self._source_partitions = 1
        self._reference = ""
        self._pending: list[dict[str, Any]] = []
        self._end_before = 0
        """Largest event time counted in the open window before the slice being added."""
        self._reset_window()

    # -- windows -------------------------------------------------------------------

    def _reset_window(self) -> None:
        f = len(self.numeric)
        self.start = 0
        self.end = 0
        self.first_offset = -1
        self.last_offset = -1
        self.records = 0
        self.late = 0
        self.count = np.zeros(f, dtype=np.int64)
        self.missing = np.zeros(f, dtype=np.int64)
        self.sums = np.zeros(f, dtype=np.float64)
        self.sum_squares = np.zeros(f, dtype=np.float64)
        self.psi_counts = [np.zeros(ref.bins, dtype=np.int64) for ref in self.numeric]
        self.ks_counts = [np.zeros(ref.ks_bins, dtype=np.int64) for ref in self.numeric]
        self.cat_counts = [
            np.zeros(len(ref.categories), dtype=np.int64) for ref in self.categorical
        ]
        self.cat_missing = np.zeros(len(self.categorical), dtype=np.int64)
        self.decisions = 0
        self.positives = 0
        self.detections: dict[tuple[str, str], dict[str, Any]] = {}

    def observe(self, rows: Rows, source_partitions: int, reference: str) -> list[dict[str, Any]]:
        """Add a batch of rows (in offset order); return reports of the windows they closed."""
        reports: list[dict[str, Any]] = []
        if not len(rows):
            return reports
        self._source_partitions = source_partitions
        self._reference = reference
        index = rows.event_time // self.window_ms
        i, n = 0, len(rows)
        while i < n:
            if self.window is None:
                self.window = int(index[i])
            elif index[i] > self.window:
                if index[i] - self.window > self.max_window_jump:
                    # Far ahead: one corrupt timestamp must not end the window and leave
                    # every later record "late" in a far-future one. Such records are
                    # counted in the open window until `jump_confirm` arrive in a row
                    # (then the stream really moved on, e.g. after a traffic gap).
                    far = index[i:] - self.window > self.max_window_jump
                    run = int(np.argmin(far)) if not far.all() else n - i
                    fold = min(run, self.jump_confirm - 1 - self.far_streak)
                    if fold > 0:
                        self._accumulate(rows.slice(i, i + fold), index[i : i + fold], far=True)
                        reports.extend(self._drain())
                        self.far_streak += fold
                        i += fold
                        continue
                self.far_streak = 0
                reports.append(self._report(source_partitions, reference))
                self._reset_window()
                self.window = int(index[i])
            self.far_streak = 0
            later = np.flatnonzero(index[i:] > self.window)
            stop = i + int(later[0]) if len(later) else n
            self._accumulate(rows.slice(i, stop), index[i:stop])
            reports.extend(self._drain())
            i = stop
        reports.append(self._progress_report())
        return reports

    def _drain(self) -> list[dict[str, Any]]:
        pending, self._pending = self._pending, []
        return pending

    def _accumulate(self, rows: Rows, index: IntArray, *, far: bool = False) -> None:
        assert self.window is not None
        n = len(rows)
        times = rows.event_time
        if far:  # out-of-range times do not stretch the window bounds
            times = np.full(n, self.end if self.records else self.window * self.window_ms)
        self._end_before = self.end if self.records else int(times[0])
        if self.records == 0:
            self.start = int(times.min())
            self.end = int(times.max())
            self.first_offset = int(rows.offset[0])
        else:
            self.start = min(self.start, int(times.min()))
            self.end = max(self.end, int(times.max()))
        self.last_offset = int(rows.offset[-1])
        self.records += n
        self.late += n if far else int(np.count_nonzero(index < self.window))
        values = rows.values
        finite = np.isfinite(values)
        self.missing += n - finite.sum(axis=0)
        for j, ref in enumerate(self.numeric):
            ok = finite[:, j]
            column = values[ok, j] if not ok.all() else values[:, j]
            self.count[j] += len(column)
            self.sums[j] += float(column.sum())
            self.sum_squares[j] += float(np.dot(column, column))
            self.psi_counts[j] += np.bincount(
                np.searchsorted(ref.edges, column, side="right"), minlength=ref.bins
            )
            ks_index = np.searchsorted(ref.ks_grid, column, side="left")
            self.ks_counts[j] += np.bincount(ks_index, minlength=ref.ks_bins)
            detectors = self.detectors[j]
            if detectors is not None and len(column):
                if len(ref.pit_scores):
                    standardised = ref.pit_scores[ks_index].tolist()
                else:  # no reference sample: standardise by the training moments
                    standardised = ((column - ref.mean) / ref.std).tolist()
                hits = detectors.update_many(standardised)
                if hits:
                    positions = np.flatnonzero(ok)
                    params = self._params[j]
                    for at, name, estimate in hits:
                        row = int(positions[at])
                        threshold = _THRESHOLD[name](params)
                        self._detected(feature=ref.name, detector=name, estimate=estimate,
                                       threshold=threshold, times=times, row=row,
                                       offset=rows.offset[row],
                                       seen=self.seen + row + 1)  # fmt: skip
        for k in range(len(self.categorical)):
            codes = rows.categories[:, k]
            present = codes[codes >= 0]
            self.cat_missing[k] += n - len(present)
            self.cat_counts[k] += np.bincount(present, minlength=len(self.cat_counts[k]))
        if self._cat_blocks:
            self._slide(rows, times)
        if rows.decisions is not None:
            self.decisions += n
            self.positives += int(rows.decisions.sum())
        self.seen += n

    def _slide(self, rows: Rows, times: IntArray) -> None:
        """Add the rows to the sliding chi-square blocks; test at each full block."""
        p = self._cat_params
        width = self.cat_block.shape[1]
        i, n = 0, len(rows)
        while i < n:
            take = min(p.category_step - self.cat_fill, n - i)
            for k in range(len(self.categorical)):
                codes = rows.categories[i : i + take, k]
                present = codes[codes >= 0]
                self.cat_block[k] += np.bincount(present, minlength=width)[:width]
            self.cat_fill += take
            i += take
            if self.cat_fill < p.category_step:
                break
            self.cat_ring.append(self.cat_block)
            self.cat_block = np.zeros_like(self.cat_block)
            self.cat_fill = 0
            if len(self.cat_ring) > self._cat_blocks:
                del self.cat_ring[0]
            if len(self.cat_ring) == self._cat_blocks and self._slide_test(
                rows, times, i - 1, self.seen + i
            ):
                self.cat_ring = []  # fired: the next test needs a whole new window

    def _slide_test(self, rows: Rows, times: IntArray, row: int, seen: int) -> bool:
        p = self._cat_params
        total = np.sum(self.cat_ring, axis=0)
        fired = False
        for k, ref in enumerate(self.categorical):
            counts = total[k, : len(ref.categories)]
            if counts.sum() < p.category_step:
                continue
            _, p_value = stats.chi_square_two_sample(ref.expected, counts, ref.sample_size)
            if p_value * len(self.categorical) >= p.category_alpha:
                continue
            delta = stats.largest_share_change(ref.expected, counts)
            if delta >= p.category_min_delta:
                self._detected(feature=ref.name, detector=CHI2_SLIDING, estimate=delta,
                               threshold=p.category_min_delta, times=times, row=row,
                               offset=rows.offset[row], seen=seen)  # fmt: skip
                fired = True
        return fired

    def _detected(
        self,
        *,
        feature: str,
        detector: str,
        estimate: float,
        threshold: float,
        times: IntArray,
        row: int,
        offset: Any,
        seen: int,
    ) -> None:
        """``times`` are the event times of the slice being added, ``row`` the firing's."""
        found = self.detections.get((feature, detector))
        if found is None:
            hit = {
                "feature": feature,
                "detector": detector,
                "estimate": estimate,
                "threshold": threshold,
                "event_time": int(times[row]),
                "offset": int(offset),
                "count": 1,
            }
            self.detections[(feature, detector)] = hit
            # The partition's mark at the firing record: the largest event time counted in
            # the window up to it, whatever the batch boundaries were.
            mark = max(self._end_before, int(times[: row + 1].max()))
            # Sent at once (not at window close): the episode opens on this record.
            self._pending.append(self._detection_report(hit, seen, mark))
        else:
            found["count"] += 1

    def _detection_report(self, hit: Mapping[str, Any], seen: int, mark: int) -> dict[str, Any]:
        return self._countless_report(
            DETECTION, start=hit["event_time"], end=mark, offset=hit["offset"],
            seen=seen,  # up to the firing record: independent of batch sizes
            detections=[dict(hit)],
        )  # fmt: skip

    def _progress_report(self) -> dict[str, Any]:
        """How far this partition has read: its mark (``window_end``), a lower bound of
        every later firing's mark. Depends on batch sizes; stage 2 only waits on it."""
        return self._countless_report(
            PROGRESS, start=self.end, end=self.end, offset=self.last_offset, seen=self.seen,
            detections=[],
        )  # fmt: skip

    def _countless_report(
        self, kind: str, *, start: int, end: int, offset: int, seen: int,
        detections: list[dict[str, Any]],
    ) -> dict[str, Any]:  # fmt: skip
        """A report without counts (a detection or a progress mark) of the open window."""
        assert self.window is not None
        return {
            "kind": kind,
            "stream": self.stream,
            "source_partition": self.partition,
            "source_partitions": self._source_partitions,
            "reference": self._reference,
            "window_index": self.window,
            "window_ms": self.window_ms,
            "window_start": start,
            "window_end": end,
            "first_offset": offset,
            "last_offset": offset,
            "records": 0,
            "late_records": 0,
            "records_seen": seen,
            "numeric": [],
            "categorical": [],
            "decisions": 0,
            "positives": 0,
            "detections": detections,
        }

    def report(self, source_partitions: int, reference: str) -> dict[str, Any]:
        """The open window's counts as a window report (what closing it sends)."""
        return self._report(source_partitions, reference)

    def _report(self, source_partitions: int, reference: str) -> dict[str, Any]:
        assert self.window is not None
        return {
            "kind": WINDOW,
            "stream": self.stream,
            "source_partition": self.partition,
            "source_partitions": source_partitions,
            "reference": reference,
            "window_index": self.window,
            "window_ms": self.window_ms,
            "window_start": self.start,
            "window_end": self.end,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "records": self.records,
            "late_records": self.late,
            "records_seen": self.seen,
            "numeric": [
                {
                    "name": ref.name,
                    "count": int(self.count[j]),
                    "missing": int(self.missing[j]),
                    "sum": float(self.sums[j]),
                    "sum_squares": float(self.sum_squares[j]),
                    "psi_counts": self.psi_counts[j].tolist(),
                    "ks_counts": self.ks_counts[j].tolist(),
                }
                for j, ref in enumerate(self.numeric)
            ],
            "categorical": [
                {
                    "name": ref.name,
                    "counts": self.cat_counts[k].tolist(),
                    "missing": int(self.cat_missing[k]),
                }
                for k, ref in enumerate(self.categorical)
            ],
            "decisions": self.decisions,
            "positives": self.positives,
            "detections": sorted(
                self.detections.values(), key=lambda d: (d["offset"], d["feature"], d["detector"])
            ),
        }

    # -- explicit state ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "seen": self.seen,
            "far_streak": self.far_streak,
            "start": self.start,
            "end": self.end,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "records": self.records,
            "late": self.late,
            "count": self.count.tolist(),
            "missing": self.missing.tolist(),
            "sums": self.sums.tolist(),
            "sum_squares": self.sum_squares.tolist(),
            "psi": [c.tolist() for c in self.psi_counts],
            "ks": [c.tolist() for c in self.ks_counts],
            "cat": [c.tolist() for c in self.cat_counts],
            "cat_missing": self.cat_missing.tolist(),
            "decisions": self.decisions,
            "positives": self.positives,
            "detections": list(self.detections.values()),
            "detectors": [None if d is None else d.to_dict() for d in self.detectors],
            "cat_fill": self.cat_fill,
            "cat_block": self.cat_block.tolist(),
            "cat_ring": [b.tolist() for b in self.cat_ring],
        }

    def load(self, state: Mapping[str, Any], *, detectors: bool = True) -> None:
        """Restore from :meth:`to_dict` output of a monitor with the same reference.

        With ``detectors=False`` the window counts are restored but the detectors stay
        fresh (their parameters or river's version changed since the state was written).
        """
        self.window = state["window"]
        self.seen = int(state["seen"])
        self.far_streak = int(state.get("far_streak", 0))
        self.start = int(state["start"])
        self.end = int(state["end"])
        self.first_offset = int(state["first_offset"])
        self.last_offset = int(state["last_offset"])
        self.records = int(state["records"])
        self.late = int(state["late"])
        self.count = np.asarray(state["count"], dtype=np.int64)
        self.missing = np.asarray(state["missing"], dtype=np.int64)
        self.sums = np.asarray(state["sums"], dtype=np.float64)
        self.sum_squares = np.asarray(state["sum_squares"], dtype=np.float64)
        self.psi_counts = [np.asarray(c, dtype=np.int64) for c in state["psi"]]
        self.ks_counts = [np.asarray(c, dtype=np.int64) for c in state["ks"]]
        self.cat_counts = [np.asarray(c, dtype=np.int64) for c in state["cat"]]
        self.cat_missing = np.asarray(state["cat_missing"], dtype=np.int64)
        self.decisions = int(state["decisions"])
        self.positives = int(state["positives"])
        self.detections = {(d["feature"], d["detector"]): dict(d) for d in state["detections"]}
        if not detectors:
            return
        if "cat_ring" in state and self._cat_blocks:
            self.cat_fill = int(state["cat_fill"])
            self.cat_block = np.asarray(state["cat_block"], dtype=np.int64).reshape(
                self.cat_block.shape
            )
            self.cat_ring = [
                np.asarray(b, dtype=np.int64).reshape(self.cat_block.shape)
                for b in state["cat_ring"]
            ]
        self.detectors = [
            None if doc is None or current is None else StreamDetectors.from_dict(params, doc)
            for doc, current, params in zip(
                state["detectors"], self.detectors, self._params, strict=True
            )
        ]


def _width(categorical: Sequence[CategoricalReference]) -> int:
    return max((len(ref.categories) for ref in categorical), default=0)


def _two_valued(ref: NumericReference) -> bool:
    """A flag or a one-hot column (at most two distinct reference values): its window
    tests (PSI over its two bins) and the chi-square of its category attribute judge it.
    Sequential mean and spread detectors on a 0/1 stream of a rare value fire on the
    clumps that busy entities make (30 of the 41 episodes of one demo run before this rule)."""
    return 0 < ref.distinct_values <= 2
