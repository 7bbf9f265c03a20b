"""Windowed metrics equal scikit-learn's on the same joined set; cumulative counters are exact
where they claim to be and round-trip through their byte layout."""

from __future__ import annotations

import random
from datetime import timedelta

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from services.performance.quality import (
    Cumulative,
    percentile,
    sample_terms,
    sorted_percentile,
    window_metrics,
)

from .support import MIN, T0, label, new_state, prediction, processor, reports, run, tick


def _ece(scores: np.ndarray, labels: np.ndarray) -> float:
    bins = np.minimum((scores * 10).astype(int), 9)
    total = 0.0
    for b in range(10):
        mask = bins == b
        if mask.any():
            total += abs(labels[mask].mean() - scores[mask].mean()) * mask.sum()
    return total / len(scores)


def _sklearn(scores: list[float], labels: list[int], threshold: float) -> dict[str, float]:
    y = np.array(labels)
    p = np.array(scores)
    pred = (p >= threshold).astype(int)
    return {
        "accuracy": accuracy_score(y, pred),
        "precision": precision_score(y, pred, zero_division=0),
        "recall": recall_score(y, pred, zero_division=0),
        "f1": f1_score(y, pred, zero_division=0),
        "roc_auc": roc_auc_score(y, p),
        "log_loss": log_loss(y, p, labels=[0, 1]),
        "brier": brier_score_loss(y, p),
        "ece": _ece(p, y),
        "positive_rate": pred.mean(),
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_window_metrics_equal_sklearn_with_ties_and_extremes(seed: int) -> None:
    rng = random.Random(seed)
    # Rounded scores make many ties; 0.0 and 1.0 exercise the log-loss clipping.
    scores = [round(rng.random(), 1) for _ in range(400)] + [0.0, 1.0, 1.0, 0.0]
    labels = [int(rng.random() < 0.2 + 0.6 * s) for s in scores[:-4]] + [1, 0, 1, 0]
    ours = window_metrics(scores, labels, [s >= 0.5 for s in scores])
    for name, expected in _sklearn(scores, labels, 0.5).items():
        assert ours[name] == pytest.approx(expected, rel=1e-12, abs=1e-12), name


def test_roc_auc_is_none_with_one_class() -> None:
    assert window_metrics([0.1, 0.9], [1, 1], [False, True])["roc_auc"] is None


def test_percentile_equals_numpy() -> None:
    values = [float(v) for v in random.Random(4).sample(range(10_000), 37)]
    for q in (50, 90):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_reports_equal_sklearn_on_the_joined_set() -> None:
    """End to end through the processor: the sliding report of each route equals sklearn
    on exactly the predictions that were joined (duplicates, a correction, an orphan and
    an unlabeled prediction included in the stream)."""
    rng = random.Random(7)
    proc = processor(window_size=150, segment_fields=["country"])
    state = new_state()
    batches = []
    truth: dict[str, int] = {}
    scored: dict[str, float] = {}
    countries: dict[str, str] = {}
    for i in range(300):
        t = T0 + 1000 + i * 100
        score = round(rng.random(), 2)
        y = int(rng.random() < score)
        scored[f"e{i}"] = score
        countries[f"e{i}"] = rng.choice(["US", "GB", "FR"])
        batch = [prediction(f"e{i}", t, score, country=countries[f"e{i}"])]
        if i % 3 == 0:
            batch.append(prediction(f"e{i}", t, score))  # duplicate
        if i % 10 != 9:  # every tenth stays unlabeled
            truth[f"e{i}"] = y
            batch.append(label(f"e{i}", t + 500, y))
        batches.append(batch)
    batches.append([label("e0", T0 + 40_000, 1 - truth["e0"])])  # a correction
    truth["e0"] = 1 - truth["e0"]
    batches.append(tick(T0 + 2 * MIN))
    result = run(proc, state, batches)
    sliding = reports(result, route="primary", window="sliding", segment_field=None)[-1]
    # The window holds the last 150 labeled by event time.
    ids = [e for e in sorted(truth, key=lambda e: int(e[1:]))][-150:]
    expected = _sklearn([scored[e] for e in ids], [truth[e] for e in ids], 0.5)
    assert sliding["labeled"] == 150
    for name, value in expected.items():
        assert sliding[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    # Each segment's sliding report: the same window, filtered to the segment value.
    for country in ("US", "GB", "FR"):
        segment = reports(result, route="primary", window="sliding", segment_value=country)[-1]
        chosen = [e for e in ids if countries[e] == country]
        expected = _sklearn([scored[e] for e in chosen], [truth[e] for e in chosen], 0.5)
        assert segment["labeled"] == len(chosen) > 10
        for name, value in expected.items():
            assert segment[name] == pytest.approx(value, rel=1e-12, abs=1e-12), (country, name)
    cumulative = reports(result, route="primary", window="cumulative", segment_field=None)[-1]
    everything = sorted(truth)
    exact = _sklearn([scored[e] for e in everything], [truth[e] for e in everything], 0.5)
    assert cumulative["labeled"] == len(truth)
    assert cumulative["corrections"] == 1
    for name in ("accuracy", "precision", "recall", "f1", "log_loss", "brier", "ece"):
        assert cumulative[name] == pytest.approx(exact[name], rel=1e-9), name
    # Cumulative AUC comes from a 100-bin score histogram: approximate by design.
    assert cumulative["roc_auc"] == pytest.approx(exact["roc_auc"], abs=0.01)
    assert cumulative["roc_auc"] != pytest.approx(0.5, abs=0.1)


def test_cumulative_round_trips_through_bytes_and_merges() -> None:
    a, b = Cumulative(), Cumulative()
    rng = random.Random(3)
    for c in (a, b):
        for _ in range(50):
            s = rng.random()
            c.add_labeled(s, s >= 0.5, int(rng.random() < s), 1, rng.randint(0, 10**8))
        c.predictions, c.expired, c.corrections = 60, 10, 2
        c.seen(T0)
    assert Cumulative.unpack(a.pack()) == a
    merged = Cumulative()
    merged.merge(a)
    merged.merge(b)
    assert merged.labeled == 100 and merged.expired == 20 and merged.first_ts == T0
    assert merged.tp + merged.fp + merged.tn + merged.fn == 100


def test_adding_samples_from_their_terms_equals_adding_them_one_by_one() -> None:
    """The release path (terms computed once per sample, added per group) gives the same
    bytes, float sums included, as add_labeled + seen per sample."""
    rng = random.Random(12)
    one_by_one, batched = Cumulative(), Cumulative()
    for c in (one_by_one, batched):  # some history first
        c.add_labeled(0.25, False, 1, 1, 7)
        c.seen(T0 + 5)
    terms = []
    for i in range(500):
        score = rng.choice([0.0, 1.0, rng.random(), round(rng.random(), 2)])
        decision, y = score >= 0.4, int(rng.random() < score)
        delay, ts = rng.choice([0, 1, rng.randint(0, 10**9)]), T0 + rng.randint(-1000, 1000) + i
        one_by_one.add_labeled(score, decision, y, 1, delay)
        one_by_one.seen(ts)
        terms.append(sample_terms(score, decision, y, delay, ts))
    batched.add_samples(terms[:123])
    batched.add_samples(terms[123:])
    assert batched.pack() == one_by_one.pack()


def test_percentile_of_sorted_values_equals_percentile() -> None:
    rng = random.Random(4)
    values = [float(rng.randint(0, 10**7)) for _ in range(301)]
    ordered = np.sort(np.asarray(values))
    for q in (0, 1, 50, 90, 99.5, 100):
        assert sorted_percentile(ordered, q) == percentile(values, q)
    assert sorted_percentile(np.empty(0), 50) is None


def test_retracting_a_sample_restores_the_counters() -> None:
    c = Cumulative()
    c.add_labeled(0.3, False, 1, 1, 5)
    before = Cumulative.unpack(c.pack())
    c.add_labeled(0.3, False, 1, -1)
    c.add_labeled(0.3, False, 0, 1)
    c.add_labeled(0.3, False, 0, -1)
    c.add_labeled(0.3, False, 1, 1)
    assert c.tp == before.tp and c.fn == before.fn and c.ece_sum_y == before.ece_sum_y
    assert c.sum_log_loss == pytest.approx(before.sum_log_loss)


def test_time_window_equals_sklearn_on_the_last_duration_of_event_time() -> None:
    rng = random.Random(8)
    proc = processor(window_kind="time", window_duration=timedelta(minutes=3))
    state = new_state()
    batches, joined = [], []
    for i in range(400):
        t = T0 + 1000 + i * 1000  # one a second, labeled 2 s later
        score, y = round(rng.random(), 2), int(rng.random() < 0.5)
        batches.append([prediction(f"e{i}", t, score), label(f"e{i}", t + 2000, y)])
        joined.append((t + 2000, score, y))
    batches.append(tick(T0 + 8 * MIN))
    result = run(proc, state, batches)
    report = reports(result, route="primary", window="sliding", segment_field=None,
                     window_end=T0 + 6 * MIN)[-1]  # fmt: skip
    inside = [(s, y) for ts, s, y in joined if T0 + 3 * MIN < ts <= T0 + 6 * MIN]
    expected = _sklearn([s for s, _ in inside], [y for _, y in inside], 0.5)
    assert report["window_start"] == T0 + 3 * MIN
    assert report["labeled"] == len(inside) == 180
    for name, value in expected.items():
        assert report[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
