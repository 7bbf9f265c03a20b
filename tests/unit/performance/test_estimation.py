"""Confidence-based performance estimation: the maths against labels drawn from a calibrated
model, and the estimates in the processor's reports before and after labels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from services.performance.estimation import (
    CALIBRATED,
    NOT_CALIBRATED,
    TOO_FEW,
    Estimator,
    ScoreMapper,
    ScoreSums,
    estimate,
)
from services.performance.processor import PerformanceProcessor
from services.scorer.calibration import Calibration, score_edges
from tests.unit.performance.support import (
    ALERTS,
    LABELS,
    MIN,
    PREDICTIONS,
    REPORTS,
    SHADOW,
    T0,
    label,
    new_state,
    prediction,
    reports,
    run,
    settings,
)


def _calibration(power: float = 1.5, *, calibrated: bool = True, seed: int = 0) -> Calibration:
    """A map p = score ** power (so the score itself is not a probability)."""
    points = np.linspace(0.0, 1.0, 201)
    reference = np.random.default_rng(seed).beta(2, 3, size=20_000)
    return Calibration(
        score_points=points.tolist(),
        probabilities=(points**power).tolist(),
        score_edges=score_edges(reference),
        rows=10_000, positives=1000, ece_before=0.05, ece_after=0.005, brier_before=0.2,
        brier_after=0.15, max_ece=0.01, min_positives=20, calibrated=calibrated,
    )  # fmt: skip


def _hanley_mcneil_se(auc: float, positives: float, negatives: float) -> float:
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    return math.sqrt(var / (positives * negatives))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimates_equal_the_realized_metrics_on_labels_from_a_calibrated_model(seed: int) -> None:
    n, threshold = 20_000, 0.5
    cal = _calibration()
    mapper = ScoreMapper(lambda name, version: cal)
    rng = np.random.default_rng(100 + seed)
    scores = rng.beta(2, 3, size=n)
    p = cal.probability(scores)
    labels = (rng.uniform(size=n) < p).astype(int)  # the model is calibrated by construction
    decided = scores >= threshold
    sums = ScoreSums()
    for score, d in zip(scores.tolist(), decided.tolist(), strict=True):
        probability, score_bin = mapper.map("m", "1", score)
        sums.add(probability, d, score_bin)
    est = estimate(sums, min_predictions=1)
    assert est["estimate_status"] == CALIBRATED

    # Tolerances: 4 standard errors of the realized metric around its expectation, from
    # the sample itself (Bernoulli variances; Hanley-McNeil for the AUC).
    tp = int((labels & decided).sum())
    fn = int((labels & ~decided).sum())
    se_precision = math.sqrt(float((p * (1 - p))[decided].sum())) / int(decided.sum())
    assert abs(tp / decided.sum() - est["estimated_precision"]) < 4 * se_precision
    a, b = float(p[decided].sum()), float(p[~decided].sum())
    var_a, var_b = float((p * (1 - p))[decided].sum()), float((p * (1 - p))[~decided].sum())
    se_recall = math.sqrt(b * b * var_a + a * a * var_b) / (a + b) ** 2
    assert abs(tp / (tp + fn) - est["estimated_recall"]) < 4 * se_recall
    auc = est["estimated_roc_auc"]
    se_auc = _hanley_mcneil_se(auc, float(p.sum()), float((1 - p).sum()))
    assert abs(roc_auc_score(labels, scores) - auc) < 4 * se_auc
    assert est["estimated_positive_rate"] == decided.mean()


def test_an_uncalibrated_model_says_so_instead_of_estimating() -> None:
    for lookup in (lambda n, v: None, lambda n, v: _calibration(calibrated=False)):
        mapper = ScoreMapper(lookup)
        sums = ScoreSums()
        for score in np.linspace(0, 1, 5000).tolist():
            p, score_bin = mapper.map("m", "1", score)
            sums.add(p, score >= 0.5, score_bin)
        est = estimate(sums, min_predictions=100)
        assert est["estimate_status"] == NOT_CALIBRATED
        assert est["estimated_predictions"] == 5000
        assert [est[k] for k in ("estimated_roc_auc", "estimated_precision")] == [None, None]
    few = ScoreSums()
    few.add(0.3, False, 0)
    assert estimate(few, min_predictions=2)["estimate_status"] == TOO_FEW
    assert estimate(ScoreSums(), min_predictions=2)["estimate_status"] == TOO_FEW


def test_all_tied_scores_estimate_an_auc_of_one_half_whatever_the_map() -> None:
    # A collapsed model: one constant score. Its own map (the base rate) and a map that
    # gives that score p = 0 (no expected positive) alike: every pair is a tie, AUC 0.5,
    # as the realized AUC of any labels with both classes is.
    rng = np.random.default_rng(7)
    for rate in (0.018, 0.0):
        sums = ScoreSums()
        for _ in range(2000):
            sums.add(rate, False, 3)
        est = estimate(sums, min_predictions=100)
        assert est["estimate_status"] == CALIBRATED
        assert est["estimated_roc_auc"] == 0.5
        assert (est["estimated_positive_rate"], est["estimated_precision"]) == (0.0, 0.0)
    labels = (rng.uniform(size=2000) < 0.018).astype(int)
    assert roc_auc_score(labels, np.full(2000, 0.0085)) == 0.5
    # Two bins with no expected positive still have no AUC (nothing says how they order).
    none = ScoreSums()
    for score_bin in (1, 2):
        none.add(0.0, False, score_bin)
    assert estimate(none, min_predictions=1)["estimated_roc_auc"] is None


def test_sums_survive_packing_and_merge_additively() -> None:
    one, two = ScoreSums(), ScoreSums()
    for i, target in enumerate((one, two, one, two, one)):
        target.add(0.1 * i, i % 2 == 0, i)
    merged = ScoreSums.unpack(one.pack())
    merged.merge(ScoreSums.unpack(two.pack()))
    whole = ScoreSums()
    for i in range(5):
        whole.add(0.1 * i, i % 2 == 0, i)
    assert estimate(merged, min_predictions=1) == estimate(whole, min_predictions=1)


# -- in the processor ---------------------------------------------------------------------


def _processor(cal: Calibration | None, **overrides: Any) -> PerformanceProcessor:
    values = settings(**overrides)
    return PerformanceProcessor(
        values,
        prediction_topics=[PREDICTIONS, SHADOW],
        label_topics=[LABELS],
        optional_topics=[SHADOW],
        report_topic=REPORTS,
        alert_topic=ALERTS,
        clock=lambda: 1.0,
        estimator=Estimator(
            lambda name, version: cal,
            interval_ms=int(values.report_interval.total_seconds() * 1000),
            window_ms=int(values.window_duration.total_seconds() * 1000),
            min_predictions=values.estimate_min_predictions,
        ),
    )


def _traffic(n: int = 600, seed: int = 0) -> list[Any]:
    """n predictions over 10 minutes, their labels all at +20 min (the labels' law does not
    matter to the estimates), then a last prediction and label that move both watermarks
    to +40 min."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        score = float(rng.beta(2, 3))
        records.append(prediction(f"e{i}", T0 + i * 1000, score, country=("US", "DE")[i % 2]))
    for i in range(n):
        records.append(label(f"e{i}", T0 + 20 * MIN, int(rng.uniform() < 0.3)))
    records.append(prediction("last", T0 + 40 * MIN, 0.5))
    records.append(label("last", T0 + 41 * MIN, 0))
    return records


def test_reports_carry_estimates_before_labels_and_realized_metrics_after() -> None:
    proc = _processor(_calibration(), estimate_min_predictions=50, slo_min={})
    result = run(proc, new_state(), [_traffic()])
    before = reports(result, window="sliding", route="primary", segment_field=None,
                     window_end=T0 + 10 * MIN)  # fmt: skip
    assert len(before) == 1
    assert before[0]["labeled"] == 0 and before[0]["roc_auc"] is None
    assert before[0]["estimate_status"] == CALIBRATED
    assert before[0]["estimated_predictions"] == 600
    assert 0.5 < before[0]["estimated_roc_auc"] < 1.0
    assert before[0]["estimate_window_start"] == T0 + 10 * MIN - 60 * MIN
    after = reports(result, window="sliding", route="primary", segment_field=None,
                    window_end=T0 + 21 * MIN)  # fmt: skip
    assert after[0]["labeled"] == 600 and after[0]["roc_auc"] is not None
    assert after[0]["estimated_predictions"] == 600  # the estimate stays beside it
    by_country = reports(result, window="sliding", segment_field="country",
                         window_end=T0 + 21 * MIN)  # fmt: skip
    assert sorted(r["estimated_predictions"] for r in by_country) == [300, 300]
    cumulative = reports(result, window="cumulative", route="primary", segment_field=None,
                         window_end=T0 + 5 * MIN)  # fmt: skip
    assert cumulative[0]["estimated_predictions"] == 301  # event times T0 .. T0 + 300 s


def test_without_a_calibration_reports_say_not_calibrated_and_no_estimate_alert() -> None:
    proc = _processor(None, estimate_min_predictions=50, slo_min={})
    result = run(proc, new_state(), [_traffic()])
    sliding = reports(result, window="sliding", route="primary", segment_field=None)
    assert sliding and {r["estimate_status"] for r in sliding} == {NOT_CALIBRATED}
    assert all(r["estimated_roc_auc"] is None for r in sliding)
    assert not [o for o in result.outputs if o.topic == ALERTS]


def test_an_estimated_auc_under_its_floor_opens_an_estimate_alert_before_any_label() -> None:
    flat = _calibration(power=0.01)  # p barely moves with the score: estimated AUC ~0.5
    proc = _processor(flat, estimate_min_predictions=50, slo_min={},
                      estimate_slo_min={"estimated_roc_auc": 0.7})  # fmt: skip
    result = run(proc, new_state(), [_traffic()])
    alerts = [o.value for o in result.outputs if o.topic == ALERTS]
    assert alerts, "no estimate alert"
    first = alerts[0]
    assert (first["kind"], first["state"], first["metric"]) == ("estimate", "open",
                                                               "estimated_roc_auc")  # fmt: skip
    assert first["labeled"] == 0 and first["predictions"] >= 50
    assert first["value"] < 0.7
    good = _processor(_calibration(), estimate_min_predictions=50, slo_min={},
                      estimate_slo_min={"estimated_roc_auc": 0.7})  # fmt: skip
    assert not [o for o in run(good, new_state(), [_traffic()]).outputs if o.topic == ALERTS]


def test_estimates_are_the_same_whatever_the_batches_and_across_a_restart() -> None:
    records = _traffic(seed=4)
    whole = run(_processor(_calibration(), estimate_min_predictions=50), new_state(), [records])
    state = new_state()
    batches = [records[i : i + 37] for i in range(0, len(records), 37)]
    first = run(_processor(_calibration(), estimate_min_predictions=50), state,
                batches[: len(batches) // 2])  # fmt: skip
    # A new processor on the committed state: the estimator rebuilds from the store.
    second = run(_processor(_calibration(), estimate_min_predictions=50), state,
                 batches[len(batches) // 2 :])  # fmt: skip
    split = [o.value for o in first.outputs + second.outputs if o.topic == REPORTS]
    assert split == [o.value for o in whole.outputs if o.topic == REPORTS]
