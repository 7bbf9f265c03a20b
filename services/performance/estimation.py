"""Model quality estimated from the scores alone, before any label: confidence-based
performance estimation (CBPE, as NannyML publishes it).

Each prediction's score becomes a probability ``p = P(label = 1)`` through the calibration
map fitted at training time (:class:`services.scorer.calibration.Calibration`, in the signed
model metadata). With the model's own decisions, the expected confusion matrix is

* ``E[TP] = sum of p`` over predicted positives, ``E[FP] = sum of (1 - p)`` over them;
* ``E[FN] = sum of p`` over predicted negatives, ``E[TN] = sum of (1 - p)`` over them;

so estimated precision is ``E[TP] / predicted positives``, recall ``E[TP] / sum of p`` and
the positive rate (share of positive decisions) is observed, not estimated. The estimated
ROC AUC is the area under the expected ROC curve: at every score cut, expected TPR is the
share of the total ``sum p`` above the cut and expected FPR the share of ``sum (1 - p)``.
Scores are summed in bins (the calibration's ``score_edges``, ~256 held-out quantiles), and
a bin counts as a tie (half its pairs ordered), so the state per window stays bounded:
:class:`ScoreSums` is additive, merged over partitions and report intervals.

An estimate is only as good as its assumptions: the map stays right (no concept drift:
P(label | score) unchanged) and the window holds enough predictions. A model without a
trusted map is reported ``not_calibrated``, a window with fewer than the minimum
predictions ``too_few``; neither carries numbers. See docs/estimated-performance.md.

>>> sums = ScoreSums()
>>> for p, decided, b in [(0.9, True, 2), (0.6, True, 1), (0.2, False, 0), (0.1, False, 0)]:
...     sums.add(p, decided, b)
>>> e = estimate(sums, min_predictions=1)
>>> e["estimate_status"], round(e["estimated_precision"], 3), round(e["estimated_recall"], 3)
('calibrated', 0.75, 0.833)
>>> round(e["estimated_roc_auc"], 4)
0.8409
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.performance.state_layout import ESTIMATE_INTERVAL_PREFIX, ESTIMATE_TOTAL_PREFIX
from services.scorer.calibration import Calibration

CALIBRATED = "calibrated"
NOT_CALIBRATED = "not_calibrated"
TOO_FEW = "too_few"
ESTIMATE_FIELDS = (
    "estimated_roc_auc",
    "estimated_precision",
    "estimated_recall",
    "estimated_positive_rate",
)

_HEAD = struct.Struct("<qqqddI")  # predictions, calibrated, decided, sum p, sum p decided, bins
_BINS: dict[int, struct.Struct] = {}  # n -> n bin numbers, n counts, n sums of p


def _bins_struct(n: int) -> struct.Struct:
    # One struct call per cell, not one per bin: a cell is re-packed at every flush.
    layout = _BINS.get(n)
    if layout is None:
        layout = _BINS[n] = struct.Struct(f"<{n}H{n}q{n}d")
    return layout


@dataclass(slots=True)
class ScoreSums:
    """Additive sufficient statistics of a set of predictions for the CBPE estimates."""

    predictions: int = 0
    calibrated: int = 0  # predictions whose model has a trusted map (p is known)
    decided: int = 0  # positive decisions among those
    sum_p: float = 0.0
    sum_p_decided: float = 0.0
    bins: dict[int, list[float]] = field(default_factory=dict)  # bin -> [count, sum p]

    def add(self, p: float | None, decided: bool, score_bin: int) -> None:
        """One prediction; ``p`` None when its model has no trusted calibration."""
        self.predictions += 1
        if p is None:
            return
        self.calibrated += 1
        self.sum_p += p
        if decided:
            self.decided += 1
            self.sum_p_decided += p
        cell = self.bins.get(score_bin)
        if cell is None:
            self.bins[score_bin] = [1, p]
        else:
            cell[0] += 1
            cell[1] += p

    def merge(self, other: ScoreSums) -> None:
        self.predictions += other.predictions
        self.calibrated += other.calibrated
        self.decided += other.decided
        self.sum_p += other.sum_p
        self.sum_p_decided += other.sum_p_decided
        for b, (count, sum_p) in other.bins.items():
            cell = self.bins.get(b)
            if cell is None:
                self.bins[b] = [count, sum_p]
            else:
                cell[0] += count
                cell[1] += sum_p

    def pack(self) -> bytes:
        head = _HEAD.pack(self.predictions, self.calibrated, self.decided, self.sum_p,
                          self.sum_p_decided, len(self.bins))  # fmt: skip
        if not self.bins:
            return head
        order = sorted(self.bins)
        cells = [self.bins[b] for b in order]
        return head + _bins_struct(len(order)).pack(
            *order, *[int(c[0]) for c in cells], *[c[1] for c in cells]
        )

    @classmethod
    def unpack(cls, raw: bytes) -> ScoreSums:
        predictions, calibrated, decided, sum_p, sum_p_decided, n = _HEAD.unpack_from(raw)
        bins: dict[int, list[float]] = {}
        if n:
            flat = _bins_struct(n).unpack_from(raw, _HEAD.size)
            for b, c, s in zip(flat[:n], flat[n : 2 * n], flat[2 * n :], strict=True):
                bins[b] = [c, s]
        return cls(predictions, calibrated, decided, sum_p, sum_p_decided, bins)


def expected_roc_auc(bins: Mapping[int, list[float]]) -> float | None:
    """Area under the expected ROC curve of score bins ``bin -> [count, sum p]`` (a higher
    bin holds higher scores); 0.5 when every score is in one bin; else None when the
    expected positives or negatives are zero.

    Scores in one bin are all tied: whatever the labels, every positive-negative pair is a
    tie, so the AUC of any labeled window with both classes is 0.5, even where the map
    expects no positive at all (a constant score where the held-out rows had no fraud).

    >>> expected_roc_auc({7: [400, 8.0]}), expected_roc_auc({7: [400, 0.0]})
    (0.5, 0.5)
    >>> expected_roc_auc({1: [200, 0.0], 7: [200, 0.0]}) is None
    True
    """
    # In bin order, never dict order: a mirror rebuilt from the store holds the same bins
    # in another order, and float sums must come out bit-identical (replays, restarts).
    ordered = [bins[b] for b in sorted(bins, reverse=True)]
    if len(ordered) == 1 and ordered[0][0] > 0:
        return 0.5
    positives = sum(c[1] for c in ordered)
    negatives = sum(c[0] - c[1] for c in ordered)
    if positives <= 0.0 or negatives <= 0.0:
        return None
    area = 0.0
    above = 0.0  # expected positives in higher bins
    for count, sum_p in ordered:
        area += (count - sum_p) * (above + sum_p / 2)
        above += sum_p
    return min(max(area / (positives * negatives), 0.0), 1.0)


def estimate(sums: ScoreSums, *, min_predictions: int) -> dict[str, Any]:
    """The report fields of one window: status, count and (when calibrated) the estimates."""
    fields: dict[str, Any] = dict.fromkeys(ESTIMATE_FIELDS)
    fields["estimated_predictions"] = sums.predictions
    if sums.calibrated < sums.predictions:
        status = NOT_CALIBRATED  # a prediction whose model has no trusted map
    elif sums.predictions < max(min_predictions, 1):
        status = TOO_FEW
    else:
        status = CALIBRATED
        fields["estimated_positive_rate"] = sums.decided / sums.predictions
        fields["estimated_precision"] = sums.sum_p_decided / sums.decided if sums.decided else 0.0
        fields["estimated_recall"] = sums.sum_p_decided / sums.sum_p if sums.sum_p > 0 else 0.0
        fields["estimated_roc_auc"] = expected_roc_auc(sums.bins)
    fields["estimate_status"] = status
    return fields


class ScoreMapper:
    """Score -> (calibrated probability or None, score bin), per model version.

    ``lookup(name, version)`` gives the version's calibration (None: unknown or absent); it
    is asked once per version, the answer kept (versions are immutable).
    """

    def __init__(self, lookup: Callable[[str, str], Calibration | None]) -> None:
        self._lookup = lookup
        self._known: dict[tuple[str, str], Calibration | None] = {}

    def calibration(self, name: str, version: str) -> Calibration | None:
        key = (name, version)
        if key not in self._known:
            self._known[key] = self._lookup(name, version)
        return self._known[key]

    def map(self, name: str, version: str, score: float) -> tuple[float | None, int]:
        cal = self.calibration(name, version)
        if cal is None or not cal.calibrated:
            return None, 0
        points, probabilities = cal.score_points, cal.probabilities
        i = bisect.bisect_right(points, score)
        if i == 0:
            p = probabilities[0]
        elif i == len(points):
            p = probabilities[-1]
        else:
            x0, x1 = points[i - 1], points[i]
            y0, y1 = probabilities[i - 1], probabilities[i]
            p = y0 + (y1 - y0) * (score - x0) / (x1 - x0) if x1 > x0 else y1
        return p, bisect.bisect_right(cal.score_edges, score)


# -- per-partition state: interval buckets and released totals --------------------------

_P_BUCKET = ESTIMATE_INTERVAL_PREFIX  # + interval (q) + group: ScoreSums counted in it
_P_TOTAL = ESTIMATE_TOTAL_PREFIX  # + group: ScoreSums of every reported interval
_K = struct.Struct("<q")
_GROUP = struct.Struct("<HBH")  # the processor's group: model id, segment field, value id

Group = tuple[int, int, int]
Named = tuple[str, str, str, str | None, str | None]  # model, route; segment field and value


@dataclass
class PartitionSums:
    """Decoded mirror of one partition's estimation keys (in the processor's metrics store)."""

    owner: object  # the processor's partition view this mirror was built for
    buckets: dict[int, dict[Group, ScoreSums]] = field(default_factory=dict)
    totals: dict[Group, ScoreSums] = field(default_factory=dict)
    dirty: set[tuple[int | None, Group]] = field(default_factory=set)


class Estimator:
    """The performance processor's estimator: sees every counted prediction, keeps its sums
    per partition, report interval and group (model route x segment) in the processor's
    metrics store, and gives each report's estimate fields at a boundary.

    A partition's mirror belongs to the processor's partition view it was built for
    (``owner``): when the processor rebuilds its view (state restored, batch aborted), the
    mirror is rebuilt from the store too, so both describe the same state. Sliding
    estimates cover the last ``window_ms`` of event time (also for count windows: a count
    of labeled predictions means nothing before labels); cumulative ones every reported
    interval, folded into the totals when its boundary is reported.
    """

    def __init__(
        self,
        lookup: Callable[[str, str], Calibration | None],
        *,
        interval_ms: int,
        window_ms: int,
        min_predictions: int,
    ) -> None:
        self._mapper = ScoreMapper(lookup)
        self._interval = interval_ms
        self._window = window_ms
        self._min = min_predictions
        self._mirrors: dict[int, PartitionSums] = {}

    def merging(self) -> Estimator:
        """An estimator for the merge stage: the same windows, fed the partitions' interval
        sums (:meth:`put_interval`) instead of predictions."""
        return Estimator(lambda _name, _version: None, interval_ms=self._interval,
                         window_ms=self._window, min_predictions=self._min)  # fmt: skip

    def _mirror(self, partition: int, owner: object, store: Any) -> PartitionSums:
        sums = self._mirrors.get(partition)
        if sums is None or sums.owner is not owner:
            sums = self._mirrors[partition] = PartitionSums(owner)
            for key, value in store.items(partition):
                if key[:1] == _P_BUCKET:
                    k = _K.unpack_from(key, 1)[0]
                    group: Group = _GROUP.unpack_from(key, 9)
                    sums.buckets.setdefault(k, {})[group] = ScoreSums.unpack(value)
                elif key[:1] == _P_TOTAL:
                    sums.totals[_GROUP.unpack_from(key, 1)] = ScoreSums.unpack(value)
        return sums

    def observe(
        self, view: Any, store: Any, k: int, groups: Iterable[Group], *, model: list[Any],
        score: float, decision: bool,
    ) -> None:  # fmt: skip
        """A prediction counted in interval ``k`` for ``groups``; ``model`` is
        ``[name, version, route, threshold]``."""
        p, score_bin = self._mapper.map(model[0], model[1], score)
        sums = self._mirror(view.partition, view, store)
        bucket = sums.buckets.get(k)
        if bucket is None:
            bucket = sums.buckets[k] = {}
        dirty = sums.dirty
        for group in groups:
            cell = bucket.get(group)
            if cell is None:
                cell = bucket[group] = ScoreSums()
            dirty.add((k, group))
            # ScoreSums.add, inlined: this runs for every prediction and segment field.
            cell.predictions += 1
            if p is None:
                continue
            cell.calibrated += 1
            cell.sum_p += p
            if decision:
                cell.decided += 1
                cell.sum_p_decided += p
            cells = cell.bins.get(score_bin)
            if cells is None:
                cell.bins[score_bin] = [1, p]
            else:
                cells[0] += 1
                cells[1] += p

    def flush(self, view: Any, store: Any) -> None:
        """Write the partition's changed sums to the store."""
        sums = self._mirror(view.partition, view, store)
        p = view.partition
        for k, group in sorted(sums.dirty, key=lambda d: (d[0] is None, d[0] or 0, d[1])):
            if k is None:
                store.put(p, _P_TOTAL + _GROUP.pack(*group), sums.totals[group].pack())
                continue
            cell = sums.buckets.get(k, {}).get(group)
            key = _P_BUCKET + _K.pack(k) + _GROUP.pack(*group)
            if cell is None:
                store.delete(p, key)
            else:
                store.put(p, key, cell.pack())
        sums.dirty.clear()

    def take_interval(self, view: Any, store: Any, k: int) -> dict[Group, ScoreSums]:
        """Stage 1 of the merge: the sums of interval ``k`` (final once its boundary is
        passed), removed from the partition's state with every earlier interval."""
        sums = self._mirror(view.partition, view, store)
        taken: dict[Group, ScoreSums] = {}
        for done in sorted(b for b in sums.buckets if b <= k):
            for group in (bucket := sums.buckets.pop(done)):
                sums.dirty.add((done, group))
            if done == k:
                taken = bucket
        return taken

    def put_interval(self, view: Any, store: Any, k: int, group: Group, cell: ScoreSums) -> None:
        """Stage 2 of the merge: one source partition's sums of interval ``k`` for ``group``
        (``view`` is the merge stage's mirror of that partition)."""
        sums = self._mirror(view.partition, view, store)
        sums.buckets.setdefault(k, {})[group] = cell
        sums.dirty.add((k, group))

    def at_boundary(
        self, views: Iterable[Any], store: Any, end: int, name: Callable[[Any, Group], Named]
    ) -> Callable[[Named], tuple[dict[str, Any], dict[str, Any]]]:
        """Fold the interval ending at ``end`` into the totals, forget intervals no window
        reaches, and return: named group -> (sliding fields, cumulative fields)."""
        k_end = end // self._interval
        first_k = (end - self._window) // self._interval + 1
        parts: list[tuple[Named, tuple[int, int], bool, ScoreSums]] = []
        for view in views:
            sums = self._mirror(view.partition, view, store)
            for group, cell in sums.buckets.get(k_end, {}).items():
                total = sums.totals.get(group)
                if total is None:
                    total = sums.totals[group] = ScoreSums()
                total.merge(cell)
                sums.dirty.add((None, group))
            for k in [k for k in sums.buckets if k < first_k]:
                for group in sums.buckets.pop(k):
                    sums.dirty.add((k, group))
            for k in range(first_k, k_end + 1):
                for group, cell in sums.buckets.get(k, {}).items():
                    parts.append((name(view, group), (view.partition, k), True, cell))
            for group, cell in sums.totals.items():
                parts.append((name(view, group), (view.partition, 0), False, cell))
        # Merged in (name, partition, interval) order: float sums bit-identical every run.
        sliding: dict[Named, ScoreSums] = {}
        cumulative: dict[Named, ScoreSums] = {}
        for named, _, in_window, cell in sorted(parts, key=lambda x: (_order(x[0]), x[1])):
            target = sliding if in_window else cumulative
            merged = target.get(named)
            if merged is None:
                merged = target[named] = ScoreSums()
            merged.merge(cell)
        start = max(end - self._window, 0)

        def fields(named: Named) -> tuple[dict[str, Any], dict[str, Any]]:
            window = estimate(sliding.get(named) or ScoreSums(), min_predictions=self._min)
            window["estimate_window_start"] = start
            overall = estimate(cumulative.get(named) or ScoreSums(), min_predictions=self._min)
            overall["estimate_window_start"] = None
            return window, overall

        return fields


def _order(named: Named) -> tuple[str, ...]:
    return (*named[:3], named[3] or "", named[4] or "")
