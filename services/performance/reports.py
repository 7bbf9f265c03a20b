"""PerformanceReport values at a report boundary: per model route and segment value, one
``sliding`` report (exact metrics over the joined samples of the window) and one
``cumulative`` report (the counters since the start).

Per-partition counters are merged by name (ids differ between partitions and runs) in name
order, so float sums come out bit-identical every time. Which segment values are reported by
name is decided from the committed counters at each boundary (:meth:`ReportBuilder.shown`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.performance.expiry import Released, ReleasedSample
from services.performance.partitions import PartitionView, ceil_div
from services.performance.quality import NO_TIME, Cumulative, sorted_percentile, window_metrics
from services.performance.settings import PerformanceSettings
from services.performance.state_layout import (
    MODEL_LEVEL,
    OTHER_NAME,
    SAMPLE_DIGEST,
    SAMPLE_MODEL,
    ModelRoute,
    model_id_of,
)
from services.performance.window import BY_TIME, SlidingWindow, WindowTuple

Segment = tuple[str | None, str | None]  # (field, value); (None, None): all traffic
ShownName = Callable[[int, str], str]  # (field index, value name) -> name reported
WindowParts = dict[Segment, dict[str, Any]]
Counts = tuple[int, int, int]  # predictions, expired, corrections
# (model name, version, route, segment field, segment value) -> estimate fields of the
# sliding and of the cumulative report; built from the boundary's ShownName.
EstimateFields = Callable[[tuple[str, str, str, str | None, str | None]],
                          tuple[dict[str, Any], dict[str, Any]]]  # fmt: skip
EstimatesAt = Callable[[ShownName], EstimateFields]


@dataclass
class BoundaryReports:
    """What one boundary reports."""

    reports: list[dict[str, Any]] = field(default_factory=list)  # in emission order
    model_reports: list[dict[str, Any]] = field(default_factory=list)  # sliding, all traffic
    window_starts: dict[ModelRoute, int] = field(default_factory=dict)  # per model route


@dataclass
class _Totals:
    """Cumulative counters merged over partitions, per model route and segment."""

    cumulative: dict[tuple[str, str, str, str | None, str | None], Cumulative]
    segments: dict[ModelRoute, set[tuple[str, str]]]
    shown: ShownName
    signature: tuple[Any, ...]


class ReportBuilder:
    """Builds the reports of each boundary; keeps each model route's sliding window (and,
    for count windows, its last results) in memory between boundaries."""

    def __init__(self, settings: PerformanceSettings, *, interval: int) -> None:
        self._fields = list(settings.segment_fields)
        self._cap = settings.segment_max_values
        self._interval = interval
        self._window_ms = int(settings.window_duration.total_seconds() * 1000)
        self._count_window = settings.window_kind == "count"
        self._window_size = settings.window_size
        # Sliding-window results per model route, reused while its window content is the
        # same (count windows: nothing released or corrected since); in memory only.
        self._results: dict[ModelRoute, tuple[tuple[Any, ...], int, WindowParts]] = {}
        # The sliding window itself per model route, as of its last report: the samples in
        # (time, digest) order and, per segment field, each value's samples in that order.
        # Samples released at a boundary are all later than every sample in the window
        # (their times are past the previous boundary), so the window moves by appending
        # them and dropping from the front; rebuilt from the views when a correction
        # changed a label in it, the reported segment values changed, or state reloaded.
        self._windows: dict[ModelRoute, tuple[tuple[Any, ...], SlidingWindow]] = {}

    def forget(self) -> None:
        """Drop what is cached about sliding windows (state reloaded or partitions moved)."""
        self._results.clear()
        self._windows.clear()

    def build(
        self,
        views: Sequence[PartitionView],
        end: int,
        released: Released,
        estimates: EstimatesAt | None = None,
    ) -> BoundaryReports:
        """The reports of the boundary at ``end`` (after its release); ``estimates`` adds
        the estimated metrics beside the realized ones."""
        totals = self._totals(views)
        estimated = None if estimates is None else estimates(totals.shown)
        thresholds: dict[ModelRoute, float] = {}
        for v in views:
            for name, version, route, threshold in v.models:
                thresholds.setdefault((name, version, route), threshold)
        # Count windows change only when samples are released or corrected: reuse the last
        # results of a model route whose window did not move (most boundaries of a quiet
        # model, every boundary of a catch-up past the end of the data).
        stale = {
            model
            for model in thresholds
            if not self._count_window
            or model in released.changed
            or model not in self._results
            or self._results[model][0] != totals.signature
        }
        rebuild = {
            model
            for model in stale
            if model in released.relabelled
            or model not in self._windows
            or self._windows[model][0] != totals.signature
        }
        collected = self._collect(views, rebuild, end, totals.shown) if rebuild else {}
        out = BoundaryReports()
        for model in sorted(thresholds):
            segments: list[Segment] = [(None, None)]
            segments += sorted(totals.segments.get(model, set()))
            if model in stale:
                if model in rebuild:
                    window = self._rebuilt(model, collected.get(model, []), totals.signature)
                else:
                    window = self._windows[model][1]
                    arrived = self._window_tuples(released.samples.get(model, ()), totals.shown)
                    arrived.sort(key=BY_TIME)
                    window.extend(arrived)
                start, parts = self._slide(model, window, segments, end, totals.signature)
            else:
                _, start, parts = self._results[model]
                if parts[(None, None)]["labeled"] == 0:
                    start = end  # an empty window starts where it ends
            out.window_starts[model] = start
            counts = self._window_counts(views, model, start, end, totals.shown)
            for segment in segments:
                part = parts.get(segment)
                if part is None:  # a segment value first counted now: none in this window
                    part = self._window_part(*SlidingWindow(0).columns())
                threshold = thresholds[model]
                sliding = self._sliding(model, segment, part, start=start, end=end,
                                        counts=counts.get(segment, (0, 0, 0)),
                                        threshold=threshold)  # fmt: skip
                total = totals.cumulative.get((*model, *segment)) or Cumulative()
                overall = self._overall(model, segment, total, end=end, threshold=threshold)
                if estimated is not None:
                    window_estimate, overall_estimate = estimated((*model, *segment))
                    sliding.update(window_estimate)
                    overall.update(overall_estimate)
                out.reports += (sliding, overall)
                if segment == (None, None):
                    out.model_reports.append(sliding)
        return out

    # -- cumulative counters, merged --------------------------------------------------

    def _totals(self, views: Sequence[PartitionView]) -> _Totals:
        counters: list[tuple[tuple[str, str, str, int, str], int, Cumulative]] = []
        popularity: dict[tuple[int, str], int] = {}
        for v in views:
            for (model_id, index, value_id), c in v.cumulative.items():
                name, version, route = v.model_route(model_id)
                seg = "" if index == MODEL_LEVEL else v.segment_name(index, value_id)
                counters.append(((name, version, route, index, seg), v.partition, c))
                if index != MODEL_LEVEL:
                    popularity[(index, seg)] = popularity.get((index, seg), 0) + c.predictions
        shown, signature = self.shown(popularity)
        totals = _Totals({}, {}, shown, signature)
        for (name, version, route, index, seg), _, c in sorted(counters, key=lambda x: x[:2]):
            if index == MODEL_LEVEL:
                seg_field, seg_value = None, None
            else:
                seg_field, seg_value = self._fields[index], shown(index, seg)
                totals.segments.setdefault((name, version, route), set()).add(
                    (seg_field, seg_value)
                )
            key = (name, version, route, seg_field, seg_value)
            total = totals.cumulative.get(key)
            if total is None:
                total = totals.cumulative[key] = Cumulative()
            total.merge(c)
        return totals

    def shown(self, popularity: Mapping[tuple[int, str], int]) -> tuple[ShownName, tuple[Any, ...]]:
        """Which segment values are reported by name: per field the ``segment_max_values``
        with the most predictions so far (ties by name); the rest are reported as 'other'.
        Decided from committed counters at each boundary, so it is the same in every run."""
        ranked: dict[int, list[tuple[int, str]]] = {}
        for (index, seg), count in popularity.items():
            if seg != OTHER_NAME:
                ranked.setdefault(index, []).append((-count, seg))
        keep = {
            index: {seg for _, seg in sorted(items)[: self._cap]} for index, items in ranked.items()
        }

        def shown(index: int, seg: str) -> str:
            return seg if seg in keep.get(index, ()) else OTHER_NAME

        return shown, tuple(sorted((index, tuple(sorted(k))) for index, k in keep.items()))

    # -- sliding windows --------------------------------------------------------------

    def _collect(
        self, views: Sequence[PartitionView], rebuild: set[ModelRoute], end: int, shown: ShownName
    ) -> dict[ModelRoute, list[WindowTuple]]:
        """Window tuples of every sample in the windows of the model routes to rebuild."""
        lower = end - self._window_ms
        count_window = self._count_window
        collected: dict[ModelRoute, list[WindowTuple]] = {}
        for v in views:
            # model key (id bytes, per partition) -> the window list it fills, or None
            targets: dict[bytes, list[WindowTuple] | None] = {}
            seg_names: dict[tuple[int, ...], tuple[str, ...]] = {}
            for key, s in v.samples.items():
                ts = s.ts
                if ts > end or (not count_window and ts <= lower):
                    continue
                model_key = key[SAMPLE_MODEL]
                if model_key in targets:
                    target = targets[model_key]
                else:
                    wanted = v.model_route(model_id_of(key))
                    target = targets[model_key] = (
                        collected.setdefault(wanted, []) if wanted in rebuild else None
                    )
                if target is None:
                    continue
                segs = seg_names.get(s.segments)
                if segs is None:
                    segs = seg_names[s.segments] = tuple(
                        shown(i, v.segment_name(i, vid)) for i, vid in enumerate(s.segments)
                    )
                target.append((ts, key[SAMPLE_DIGEST], s.score, s.decision, s.label, s.delay,
                               segs))  # fmt: skip
        return collected

    def _rebuilt(
        self, model: ModelRoute, collected: list[WindowTuple], signature: tuple[Any, ...]
    ) -> SlidingWindow:
        window = SlidingWindow(len(self._fields))
        self._windows[model] = (signature, window)
        arrived = sorted(collected, key=BY_TIME)
        if self._count_window:
            arrived = arrived[-self._window_size :]
        window.extend(arrived)
        return window

    @staticmethod
    def _window_tuples(fresh: Iterable[ReleasedSample], shown: ShownName) -> list[WindowTuple]:
        """Window tuples of samples released at this boundary (as the full build makes)."""
        seg_names: dict[tuple[int, tuple[int, ...]], tuple[str, ...]] = {}
        out = []
        for v, key, s in fresh:
            segs = seg_names.get((v.partition, s.segments))
            if segs is None:
                segs = seg_names[(v.partition, s.segments)] = tuple(
                    shown(i, v.segment_name(i, vid)) for i, vid in enumerate(s.segments)
                )
            out.append((s.ts, key[SAMPLE_DIGEST], s.score, s.decision, s.label, s.delay, segs))
        return out

    def _slide(
        self,
        model: ModelRoute,
        window: SlidingWindow,
        segments: list[Segment],
        end: int,
        signature: tuple[Any, ...],
    ) -> tuple[int, WindowParts]:
        """Move the window to ``end``; its start and the sample-based fields per segment."""
        if self._count_window:
            window.keep_last(self._window_size)
            start = int(window.ts[0]) if len(window) else end
        else:
            start = end - self._window_ms
            window.drop_until_after(start)
        parts: WindowParts = {}
        for seg_field, seg_value in segments:
            field_index = None if seg_field is None else self._fields.index(seg_field)
            parts[(seg_field, seg_value)] = self._window_part(
                *window.columns(field_index, seg_value)
            )
        if self._count_window:
            self._results[model] = (signature, start, parts)
        return start, parts

    def _window_counts(
        self,
        views: Sequence[PartitionView],
        model: ModelRoute,
        start: int,
        end: int,
        shown: ShownName,
    ) -> dict[Segment, Counts]:
        """Predictions, expired and corrections per segment in the intervals of the window."""
        if self._count_window:
            first_k = min(ceil_div(start, self._interval), end // self._interval)
        else:
            first_k = start // self._interval + 1
        totals: dict[Segment, list[int]] = {}
        for v in views:
            model_id = v.model_ids.get(model)
            if model_id is None:
                continue
            for k in range(first_k, end // self._interval + 1):
                bucket = v.buckets.get(k)
                if not bucket:
                    continue
                for (group_model, index, value_id), counts in bucket.items():
                    if group_model != model_id:
                        continue
                    name: Segment = (
                        (None, None) if index == MODEL_LEVEL
                        else (self._fields[index], shown(index, v.segment_name(index, value_id)))
                    )  # fmt: skip
                    total = totals.setdefault(name, [0, 0, 0])
                    for column in range(3):
                        total[column] += counts[column]
        return {name: (t[0], t[1], t[2]) for name, t in totals.items()}

    # -- report values ----------------------------------------------------------------

    @staticmethod
    def _base(
        model: ModelRoute, segment: Segment, window: str, *, start: int, end: int, threshold: float
    ) -> dict[str, Any]:
        return {
            "model_name": model[0],
            "model_version": model[1],
            "route": model[2],
            "segment_field": segment[0],
            "segment_value": segment[1],
            "window": window,
            "window_start": start,
            "window_end": end,
            "threshold": threshold,
        }

    @staticmethod
    def _window_part(
        scores: np.ndarray, labels: np.ndarray, decisions: np.ndarray, delays: np.ndarray
    ) -> dict[str, Any]:
        """The sample-based fields of a sliding report (exact, from the joined samples)."""
        part: dict[str, Any] = window_metrics(scores, labels, decisions)
        ordered = np.sort(delays)
        part.update(
            labeled=len(scores),
            label_delay_p50_ms=sorted_percentile(ordered, 50),
            label_delay_p90_ms=sorted_percentile(ordered, 90),
        )
        return part

    def _sliding(
        self,
        model: ModelRoute,
        segment: Segment,
        part: Mapping[str, Any],
        *,
        start: int,
        end: int,
        counts: Counts,
        threshold: float,
    ) -> dict[str, Any]:
        report = self._base(model, segment, "sliding", start=start, end=end, threshold=threshold)
        report.update(part)
        labeled = part["labeled"]
        predictions, expired, corrections = counts
        report.update(
            predictions=predictions,
            label_coverage=labeled / (labeled + expired) if labeled + expired else 0.0,
            corrections=corrections,
        )
        return report

    def _overall(
        self, model: ModelRoute, segment: Segment, total: Cumulative, *, end: int, threshold: float
    ) -> dict[str, Any]:
        start = total.first_ts if total.first_ts != NO_TIME else end
        report = self._base(model, segment, "cumulative", start=start, end=end,
                            threshold=threshold)  # fmt: skip
        report.update(total.metrics())
        labeled = total.labeled
        report.update(
            predictions=total.predictions,
            labeled=labeled,
            label_coverage=labeled / (labeled + total.expired) if labeled + total.expired else 0.0,
            corrections=total.corrections,
        )
        return report
