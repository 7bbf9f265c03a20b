"""Score calibration, fitted at training time on held-out rows, for performance estimation.

A model's score orders events well (its AUC) but need not be a probability. Confidence-based
performance estimation (``services/performance/estimation.py``) needs one: it turns each
score into P(label = 1) with the map stored here and sums those into an expected confusion
matrix. The scorer never applies the map; its outputs stay the raw scores.

The map is isotonic (monotone, piecewise linear between fitted points; see
docs/decisions/calibration-isotonic.md). It is fitted on the first half (by event time) of the
held-out rows and judged on the second half, so the quality figures stored beside it are
out of sample; where the raw score is the better calibrated on that half (a boosted model
with few positives to fit on), the stored map is the identity (``method="identity"``). The
figures: expected calibration error (ECE, 10 equal-width bins, as the performance
service reports it) and Brier score, before and after the map. A map whose ECE after is
above ``max_ece``, or judged on fewer than ``min_positives`` positives, is stored with
``calibrated = false``; the estimator then reports "not calibrated" for the model instead of
a confident estimate.

>>> cal = Calibration(score_points=[0.0, 0.5, 1.0], probabilities=[0.0, 0.2, 0.9],
...                   score_edges=[0.5], rows=10, positives=2, ece_before=0.1,
...                   ece_after=0.01, brier_before=0.2, brier_after=0.1, max_ece=0.02,
...                   min_positives=1, calibrated=True)
>>> [round(float(p), 3) for p in cal.probability([0.25, 0.75, 2.0])]
[0.1, 0.55, 0.9]
>>> expected_calibration_error([0.1, 0.1, 0.9, 0.9], [0, 0, 1, 1])
0.1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

ECE_BINS = 10
MAX_ECE = 0.01
"""Default largest held-out ECE (after the map) for a model to count as calibrated: half
the demo's base rate of ~2%, so a map that is off by half of it on average is refused."""
MIN_POSITIVES = 20
"""Default fewest positives in the judging half for the figures to mean anything (the
demo's 20,000 training events leave ~20 there; fewer and one label moves ECE by ~0.0005)."""
SCORE_BINS = 256
"""Most score bins the estimator sums calibrated probabilities over (for its ROC AUC)."""


class Calibration(BaseModel):
    """A monotone map from raw score to probability, and how good it was on held-out rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = Field(default="isotonic", description="How the map was fitted.")
    score_points: list[float] = Field(
        min_length=1,
        description="Ascending raw scores; the map interpolates linearly between them and is "
        "constant beyond the ends.",
    )
    probabilities: list[float] = Field(
        min_length=1, description="P(label = 1) at each score point (non-decreasing)."
    )
    score_edges: list[float] = Field(
        default_factory=list,
        description="Inner score bin edges (ascending, distinct; quantiles of held-out "
        "scores) over which the estimator sums probabilities to estimate ROC AUC.",
    )
    rows: int = Field(ge=0, description="Held-out rows the figures were measured on.")
    positives: int = Field(ge=0, description="Positives among them.")
    ece_before: float = Field(description="ECE of the raw score on the judging rows.")
    ece_after: float = Field(description="ECE of the calibrated probability on them.")
    brier_before: float = Field(description="Brier score of the raw score on them.")
    brier_after: float = Field(description="Brier score of the calibrated probability.")
    max_ece: float = Field(description="The ECE limit the model was judged against.")
    min_positives: int = Field(description="The fewest positives the judgement needed.")
    calibrated: bool = Field(
        description="ece_after <= max_ece and positives >= min_positives: estimates from this "
        "map are trusted. False: the estimator says 'not calibrated' for the model."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        if len(self.score_points) != len(self.probabilities):
            raise ValueError("score_points and probabilities must have the same length")
        if any(b < a for a, b in zip(self.score_points, self.score_points[1:], strict=False)):
            raise ValueError("score_points must be ascending")
        if any(b <= a for a, b in zip(self.score_edges, self.score_edges[1:], strict=False)):
            raise ValueError("score_edges must be strictly ascending")
        if any(not 0.0 <= p <= 1.0 for p in self.probabilities):
            raise ValueError("probabilities must be in [0, 1]")
        return self

    def probability(self, scores: Sequence[float] | npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Calibrated P(label = 1) of each score."""
        return np.interp(
            np.asarray(scores, dtype=np.float64), self.score_points, self.probabilities
        )


def expected_calibration_error(
    probabilities: Sequence[float] | npt.NDArray[Any], labels: Sequence[int] | npt.NDArray[Any]
) -> float:
    """ECE over 10 equal-width bins, weighted by rows (the performance service's ``ece``)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if not len(p):
        return 0.0
    bins = np.minimum((np.maximum(p, 0.0) * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    gap = np.bincount(bins, weights=y - p, minlength=ECE_BINS)
    return round(float(np.abs(gap).sum() / len(p)), 12)


def _brier(p: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
    return float(np.mean((p - y) ** 2)) if len(p) else 0.0


def score_edges(scores: npt.NDArray[np.float64], bins: int = SCORE_BINS) -> list[float]:
    """Distinct inner quantiles of ``scores``: bins of about equal held-out mass."""
    if not len(scores):
        return []
    cuts = np.quantile(scores, np.arange(1, bins) / bins)
    return [float(c) for c in np.unique(cuts) if c > scores.min()]


def fit_calibration(
    scores: Sequence[float] | npt.NDArray[Any],
    labels: Sequence[int] | npt.NDArray[Any],
    *,
    max_ece: float = MAX_ECE,
    min_positives: int = MIN_POSITIVES,
) -> Calibration:
    """Fit on the first half of the held-out rows (given in event-time order), judge on the
    second half. The map stored is the one judged, so its figures are out of sample."""
    from sklearn.isotonic import IsotonicRegression

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(s) != len(y) or len(s) < 4:
        raise ValueError(f"need >= 4 held-out rows with labels, got {len(s)}")
    cut = len(s) // 2
    fit_s, fit_y, judge_s, judge_y = s[:cut], y[:cut], s[cut:], y[cut:]
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    isotonic.fit(fit_s, fit_y)
    points = [float(x) for x in isotonic.X_thresholds_]
    probabilities = [float(min(max(p, 0.0), 1.0)) for p in isotonic.y_thresholds_]
    positives = int(judge_y.sum())
    draft = Calibration(
        score_points=points,
        probabilities=probabilities,
        score_edges=score_edges(s),
        rows=len(judge_s),
        positives=positives,
        ece_before=expected_calibration_error(judge_s, judge_y),
        ece_after=0.0,
        brier_before=_brier(judge_s, judge_y),
        brier_after=0.0,
        max_ece=max_ece,
        min_positives=min_positives,
        calibrated=False,
    )
    calibrated = draft.probability(judge_s)
    ece_after = expected_calibration_error(calibrated, judge_y)
    update: dict[str, Any] = {"ece_after": ece_after, "brier_after": _brier(calibrated, judge_y)}
    if ece_after > draft.ece_before:
        # The fitted map made things worse out of sample: keep the raw score.
        update = {
            "method": "identity",
            "score_points": [0.0, 1.0],
            "probabilities": [0.0, 1.0],
            "ece_after": draft.ece_before,
            "brier_after": draft.brier_before,
        }
    update["calibrated"] = update["ece_after"] <= max_ece and positives >= min_positives
    return draft.model_copy(update=update)
