"""Model-quality metrics: exact ones over a window of joined predictions, and cumulative counters.

Windowed metrics are computed from the joined samples themselves and equal scikit-learn's
on the same set (ROC AUC with tied scores as the trapezoid rule does, log loss with
probabilities clipped to machine epsilon as ``sklearn.metrics.log_loss`` does, precision and
recall 0.0 when undefined as sklearn's ``zero_division`` default). Cumulative metrics live
in :class:`Cumulative`, a fixed-size block of counters: exact for every count-based metric,
log loss, Brier score and ECE; **approximate** for ROC AUC (a 100-bin score histogram) and
for the label-delay percentiles (half-octave histogram), so its size never grows.

>>> m = window_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], [False, False, False, True])
>>> m["roc_auc"], m["accuracy"]
(0.75, 0.75)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

EPS = 2.220446049250313e-16  # float64 machine epsilon, as sklearn's log_loss clips
ECE_BINS = 10
AUC_BINS = 100
DELAY_BINS = 64

METRIC_NAMES = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "log_loss",
    "brier",
    "ece",
    "positive_rate",
)


def _ece_bin(score: float) -> int:
    return min(int(score * ECE_BINS), ECE_BINS - 1) if score > 0 else 0


def _auc_bin(score: float) -> int:
    return min(int(score * AUC_BINS), AUC_BINS - 1) if score > 0 else 0


def _delay_bin(delay_ms: int) -> int:
    if delay_ms < 1:
        return 0
    return min(DELAY_BINS - 1, 1 + int(2 * math.log2(delay_ms)))


def _delay_of_bin(index: int) -> float:
    # Geometric middle of the half-octave the bin covers.
    return 0.0 if index == 0 else 2.0 ** ((index - 1 + 0.5) / 2)


def _pointwise_loss(score: float, label: int) -> float:
    p = min(max(score, EPS), 1 - EPS)
    return -math.log(p) if label else -math.log(1 - p)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation, as ``numpy.percentile``."""
    if not values:
        return None
    return sorted_percentile(sorted(values), q)


def sorted_percentile(ordered: Sequence[float] | np.ndarray, q: float) -> float | None:
    """:func:`percentile` of values already in ascending order (sort once, read several)."""
    if not len(ordered):
        return None
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def _ece(count: Sequence[int], sum_p: Sequence[float], sum_y: Sequence[int]) -> float | None:
    total = sum(count)
    if total == 0:
        return None
    return sum(abs(sum_y[b] - sum_p[b]) for b in range(ECE_BINS) if count[b]) / total


def _classification(tp: int, fp: int, tn: int, fn: int) -> dict[str, float | None]:
    n = tp + fp + tn + fn
    if n == 0:
        return dict.fromkeys(("accuracy", "precision", "recall", "f1", "positive_rate"))
    return {
        "accuracy": (tp + tn) / n,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "positive_rate": (tp + fp) / n,
    }


def _mid_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def window_metrics(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    decisions: Sequence[bool] | np.ndarray,
) -> dict[str, float | None]:
    """Every quality metric over one joined set; None where a metric is undefined.

    Vectorized with numpy (a report boundary evaluates every model route and segment over
    windows of thousands of samples); same definitions as the scalar helpers above.
    """
    n = len(scores)
    if n == 0:
        return dict.fromkeys(METRIC_NAMES)
    p = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    d = np.asarray(decisions, dtype=bool)
    positive = y == 1
    tp = int(np.count_nonzero(d & positive))
    fp = int(np.count_nonzero(d & ~positive))
    fn = int(np.count_nonzero(~d & positive))
    metrics = _classification(tp, fp, n - tp - fp - fn, fn)
    clipped = np.clip(p, EPS, 1 - EPS)
    metrics["log_loss"] = float(-np.where(positive, np.log(clipped), np.log(1 - clipped)).mean())
    metrics["brier"] = float(np.mean((p - y) ** 2))
    bins = np.minimum((np.maximum(p, 0.0) * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    count = np.bincount(bins, minlength=ECE_BINS)
    gap = np.bincount(bins, weights=y - p, minlength=ECE_BINS)
    metrics["ece"] = float(np.abs(gap[count > 0]).sum() / n)
    n_pos = int(positive.sum())
    if 0 < n_pos < n:
        rank_sum = float(_mid_ranks(p)[positive].sum())
        metrics["roc_auc"] = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))
    else:
        metrics["roc_auc"] = None
    return metrics


# What one joined sample adds to every group it counts in, computed once per sample:
# decision, label, score, log loss, Brier term, ECE bin, AUC bin, label-delay bin, time.
SampleTerms = tuple[bool, int, float, float, float, int, int, int, int]


def sample_terms(score: float, decision: bool, label: int, delay_ms: int, ts: int) -> SampleTerms:
    """The terms ``Cumulative.add_labeled(score, decision, label, 1, delay_ms)`` adds."""
    return (
        decision,
        label,
        score,
        _pointwise_loss(score, label),
        (score - label) ** 2,
        _ece_bin(score),
        _auc_bin(score),
        _delay_bin(delay_ms),
        ts,
    )


_SCALARS = 9  # predictions, labeled, expired, corrections, tp, fp, tn, fn, first_ts
_CUMULATIVE = struct.Struct(
    "<" + "q" * _SCALARS + "dd" + "qdq" * ECE_BINS + "q" * (2 * AUC_BINS) + "q" * DELAY_BINS
)
NO_TIME = -(2**63)


@dataclass(slots=True)
class Cumulative:
    """Counters of one group since the service first saw it; fixed size, mergeable by ``+=``."""

    predictions: int = 0
    labeled: int = 0
    expired: int = 0
    corrections: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    first_ts: int = NO_TIME
    sum_log_loss: float = 0.0
    sum_brier: float = 0.0
    ece_count: list[int] = field(default_factory=lambda: [0] * ECE_BINS)
    ece_sum_p: list[float] = field(default_factory=lambda: [0.0] * ECE_BINS)
    ece_sum_y: list[int] = field(default_factory=lambda: [0] * ECE_BINS)
    auc_pos: list[int] = field(default_factory=lambda: [0] * AUC_BINS)
    auc_neg: list[int] = field(default_factory=lambda: [0] * AUC_BINS)
    delay: list[int] = field(default_factory=lambda: [0] * DELAY_BINS)

    def add_labeled(
        self, score: float, decision: bool, label: int, sign: int = 1, delay_ms: int | None = None
    ) -> None:
        """Count (sign=1) or retract (sign=-1) one joined prediction."""
        if decision:
            if label:
                self.tp += sign
            else:
                self.fp += sign
        elif label:
            self.fn += sign
        else:
            self.tn += sign
        self.sum_log_loss += sign * _pointwise_loss(score, label)
        self.sum_brier += sign * (score - label) ** 2
        b = _ece_bin(score)
        self.ece_count[b] += sign
        self.ece_sum_p[b] += sign * score
        self.ece_sum_y[b] += sign * label
        if label:
            self.auc_pos[_auc_bin(score)] += sign
        else:
            self.auc_neg[_auc_bin(score)] += sign
        if delay_ms is not None:
            self.labeled += sign
            self.delay[_delay_bin(delay_ms)] += sign

    def add_samples(self, samples: Sequence[SampleTerms]) -> None:
        """Count joined predictions, in order: for each, the same additions as
        ``add_labeled(score, decision, label, 1, delay)`` then ``seen(ts)``, from terms
        computed once per sample for every group it counts in (``sample_terms``)."""
        tp, fp, tn, fn = self.tp, self.fp, self.tn, self.fn
        sum_log_loss, sum_brier, first_ts = self.sum_log_loss, self.sum_brier, self.first_ts
        ece_count, ece_sum_p, ece_sum_y = self.ece_count, self.ece_sum_p, self.ece_sum_y
        auc_pos, auc_neg, delay = self.auc_pos, self.auc_neg, self.delay
        for decision, label, score, loss, brier, ece_bin, auc_bin, delay_bin, ts in samples:
            if decision:
                if label:
                    tp += 1
                else:
                    fp += 1
            elif label:
                fn += 1
            else:
                tn += 1
            sum_log_loss += loss
            sum_brier += brier
            ece_count[ece_bin] += 1
            ece_sum_p[ece_bin] += score
            ece_sum_y[ece_bin] += label
            if label:
                auc_pos[auc_bin] += 1
            else:
                auc_neg[auc_bin] += 1
            delay[delay_bin] += 1
            if first_ts == NO_TIME or ts < first_ts:
                first_ts = ts
        self.tp, self.fp, self.tn, self.fn = tp, fp, tn, fn
        self.sum_log_loss, self.sum_brier, self.first_ts = sum_log_loss, sum_brier, first_ts
        self.labeled += len(samples)

    def seen(self, ts: int) -> None:
        if self.first_ts == NO_TIME or ts < self.first_ts:
            self.first_ts = ts

    def merge(self, other: Cumulative) -> None:
        self.predictions += other.predictions
        self.labeled += other.labeled
        self.expired += other.expired
        self.corrections += other.corrections
        self.tp += other.tp
        self.fp += other.fp
        self.tn += other.tn
        self.fn += other.fn
        if other.first_ts != NO_TIME:
            self.seen(other.first_ts)
        self.sum_log_loss += other.sum_log_loss
        self.sum_brier += other.sum_brier
        self.ece_count = [a + b for a, b in zip(self.ece_count, other.ece_count, strict=True)]
        self.ece_sum_p = [a + b for a, b in zip(self.ece_sum_p, other.ece_sum_p, strict=True)]
        self.ece_sum_y = [a + b for a, b in zip(self.ece_sum_y, other.ece_sum_y, strict=True)]
        self.auc_pos = [a + b for a, b in zip(self.auc_pos, other.auc_pos, strict=True)]
        self.auc_neg = [a + b for a, b in zip(self.auc_neg, other.auc_neg, strict=True)]
        self.delay = [a + b for a, b in zip(self.delay, other.delay, strict=True)]

    def metrics(self) -> dict[str, float | None]:
        """The quality metrics these counters support (AUC, delay percentiles approximate)."""
        metrics = _classification(self.tp, self.fp, self.tn, self.fn)
        n = self.tp + self.fp + self.tn + self.fn
        metrics["log_loss"] = self.sum_log_loss / n if n else None
        metrics["brier"] = self.sum_brier / n if n else None
        metrics["ece"] = _ece(self.ece_count, self.ece_sum_p, self.ece_sum_y)
        metrics["roc_auc"] = self._histogram_auc()
        metrics["label_delay_p50_ms"] = self._delay_quantile(0.5)
        metrics["label_delay_p90_ms"] = self._delay_quantile(0.9)
        return metrics

    def _histogram_auc(self) -> float | None:
        positives = sum(self.auc_pos)
        negatives = sum(self.auc_neg)
        if positives <= 0 or negatives <= 0:
            return None
        below = 0
        area = 0.0
        for b in range(AUC_BINS):
            area += self.auc_pos[b] * (below + 0.5 * self.auc_neg[b])
            below += self.auc_neg[b]
        return area / (positives * negatives)

    def _delay_quantile(self, q: float) -> float | None:
        total = sum(self.delay)
        if total <= 0:
            return None
        rank = q * total
        running = 0
        for b in range(DELAY_BINS):
            running += self.delay[b]
            if running >= rank and self.delay[b]:
                return _delay_of_bin(b)
        return _delay_of_bin(DELAY_BINS - 1)

    def pack(self) -> bytes:
        ece: list[int | float] = []
        for b in range(ECE_BINS):
            ece += [self.ece_count[b], self.ece_sum_p[b], self.ece_sum_y[b]]
        return _CUMULATIVE.pack(
            self.predictions,
            self.labeled,
            self.expired,
            self.corrections,
            self.tp,
            self.fp,
            self.tn,
            self.fn,
            self.first_ts,
            self.sum_log_loss,
            self.sum_brier,
            *ece,
            *self.auc_pos,
            *self.auc_neg,
            *self.delay,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Cumulative:
        values = _CUMULATIVE.unpack(data)
        ece = values[_SCALARS + 2 : _SCALARS + 2 + 3 * ECE_BINS]
        rest = values[_SCALARS + 2 + 3 * ECE_BINS :]
        c = cls()
        (c.predictions, c.labeled, c.expired, c.corrections, c.tp, c.fp, c.tn, c.fn,
         c.first_ts) = values[:_SCALARS]  # fmt: skip
        c.sum_log_loss, c.sum_brier = values[_SCALARS], values[_SCALARS + 1]
        c.ece_count, c.ece_sum_p, c.ece_sum_y = list(ece[0::3]), list(ece[1::3]), list(ece[2::3])
        c.auc_pos = list(rest[:AUC_BINS])
        c.auc_neg = list(rest[AUC_BINS : 2 * AUC_BINS])
        c.delay = list(rest[2 * AUC_BINS :])
        return c
