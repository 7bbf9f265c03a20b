"""Every path of the label join: before, after, duplicated, corrected, too late, orphan, expired."""

from __future__ import annotations

from typing import Any

from services.performance.processor import JOIN_STORE, event_digest
from streamml.processor import Output

from .support import (
    HOUR,
    LABELS,
    MIN,
    T0,
    label,
    new_state,
    prediction,
    processor,
    reports,
    run,
    tick,
)


def _latest(result: Any, **match: Any) -> dict[str, Any]:
    found = reports(result, route="primary", segment_field=None, **match)
    assert found, f"no report matching {match}"
    return found[-1]


def _dead_letters(result: Any) -> list[Output]:
    return [o for o in result.outputs if o.topic == LABELS + ".dlq"]


def test_label_after_prediction_joins_and_is_reported() -> None:
    proc, state = processor(), new_state()
    result = run(
        proc,
        state,
        [
            [prediction("a", T0 + 1000, 0.9), prediction("b", T0 + 2000, 0.2)],
            [label("a", T0 + 30_000, 1), label("b", T0 + 40_000, 0)],
            tick(T0 + 2 * MIN),
        ],
    )
    sliding = _latest(result, window="sliding")
    assert sliding["labeled"] == 2
    assert sliding["predictions"] == 2
    assert sliding["accuracy"] == 1.0
    assert sliding["roc_auc"] == 1.0
    assert sliding["label_delay_p50_ms"] == (29_000 + 38_000) / 2
    cumulative = _latest(result, window="cumulative")
    assert cumulative["labeled"] == 2
    assert cumulative["predictions"] == 2
    assert result.rejections == []


def test_label_before_prediction_waits_and_joins() -> None:
    proc, state = processor(), new_state()
    result = run(
        proc,
        state,
        [
            [label("a", T0 + 1000, 1), label("b", T0 + 1000, 0)],
            [prediction("a", T0 + 5000, 0.8), prediction("b", T0 + 6000, 0.3)],
            tick(T0 + 3 * MIN),
        ],
    )
    sliding = _latest(result, window="sliding")
    assert sliding["labeled"] == 2
    assert sliding["accuracy"] == 1.0
    assert not [o for o in _dead_letters(result) if o.value["event_id"] in ("a", "b")]


def test_duplicates_never_count_twice() -> None:
    proc, state = processor(), new_state()
    result = run(
        proc,
        state,
        [
            [prediction("a", T0 + 1000, 0.9), prediction("a", T0 + 1000, 0.9)],
            [label("a", T0 + 2000, 1), label("a", T0 + 2000, 1)],
            [prediction("a", T0 + 1000, 0.9), label("a", T0 + 2000, 1)],
            tick(T0 + 2 * MIN),
        ],
    )
    sliding = _latest(result, window="sliding")
    assert (sliding["predictions"], sliding["labeled"], sliding["corrections"]) == (1, 1, 0)
    cumulative = _latest(result, window="cumulative")
    assert (cumulative["predictions"], cumulative["labeled"]) == (1, 1)
    assert result.rejections == []


def test_primary_and_shadow_both_join_one_label() -> None:
    proc, state = processor(), new_state()
    result = run(
        proc,
        state,
        [
            [prediction("a", T0 + 1000, 0.9)],
            [label("a", T0 + 2000, 1)],
            [prediction("a", T0 + 1000, 0.2, route="shadow", version="2")],
            tick(T0 + 2 * MIN),
        ],
    )
    shadow = reports(
        result, route="shadow", model_version="2", window="sliding", segment_field=None
    )[-1]
    assert (shadow["labeled"], shadow["recall"]) == (1, 0.0)
    assert _latest(result, window="sliding")["recall"] == 1.0


def test_correction_uses_latest_label_and_is_counted() -> None:
    proc, state = processor(), new_state()
    result = run(
        proc,
        state,
        [
            [prediction("a", T0 + 1000, 0.9), prediction("b", T0 + 1000, 0.1)],
            [label("a", T0 + 2000, 0), label("b", T0 + 2000, 0)],
            tick(T0 + 2 * MIN),
            [label("a", T0 + 3 * MIN, 1)],  # the chargeback came after all
            tick(T0 + 5 * MIN),
        ],
    )
    first = _latest(result, window="cumulative", window_end=T0 + 2 * MIN)
    assert (first["accuracy"], first["corrections"]) == (0.5, 0)
    sliding = _latest(result, window="sliding")
    cumulative = _latest(result, window="cumulative")
    for report in (sliding, cumulative):
        assert report["accuracy"] == 1.0
        assert report["labeled"] == 2
    assert cumulative["corrections"] == 1
    assert sliding["corrections"] == 1


def test_correction_of_an_early_label() -> None:
    proc, state = processor(), new_state()
    result = run(
        proc,
        state,
        [
            [label("a", T0 + 1000, 0)],
            [label("a", T0 + 2000, 1)],
            [prediction("a", T0 + 3000, 0.9)],
            tick(T0 + 2 * MIN),
        ],
    )
    cumulative = _latest(result, window="cumulative")
    assert (cumulative["labeled"], cumulative["tp" if False else "recall"]) == (1, 1.0)
    assert cumulative["corrections"] == 1


def test_label_after_the_horizon_is_rejected_as_late() -> None:
    proc, state = processor(), new_state()
    result = run(
        proc,
        state,
        [
            [prediction("a", T0 + 1000, 0.9)],
            [label("a", T0 + 1000 + 3 * HOUR, 1)],  # delay 3 h > horizon 2 h
        ],
    )
    assert [(r.reason, r.record.value["event_id"]) for r in result.rejections] == [("late", "a")]


def test_label_for_an_expired_prediction_is_late_and_coverage_drops() -> None:
    proc, state = processor(), new_state()
    batches = [[prediction("a", T0 + 1000, 0.9), prediction("b", T0 + 1000, 0.9)]]
    batches.append([label("b", T0 + 5000, 1)])
    batches += [tick(T0 + m * MIN) for m in range(1, 130, 8)]  # past a's horizon (2 h)
    batches.append([label("a", T0 + 130 * MIN, 1)])
    result = run(proc, state, batches)
    assert [(r.reason, r.record.value["event_id"]) for r in result.rejections] == [("late", "a")]
    cumulative = _latest(result, window="cumulative")
    assert (cumulative["labeled"], cumulative["label_coverage"]) == (1, 0.5)


def test_orphan_label_goes_to_the_dead_letter_topic_after_grace() -> None:
    proc, state = processor(), new_state()
    result = run(
        proc,
        state,
        [[label("x", T0 + 1000, 1)]] + [tick(T0 + m * MIN) for m in range(1, 13)],
    )
    orphans = [o for o in _dead_letters(result) if o.value["event_id"] == "x"]
    assert len(orphans) == 1
    headers = dict(orphans[0].headers)
    assert headers["dlq.error.class"] == b"orphan"
    assert headers["dlq.source.topic"] == LABELS.encode()
    assert orphans[0].value["label"] == 1


def test_prediction_after_the_grace_period_makes_the_early_label_an_orphan() -> None:
    proc, state = processor(), new_state()
    result = run(proc, state, [[label("x", T0 + 1000, 1)], [prediction("x", T0 + 20 * MIN, 0.7)]])
    assert [o.value["event_id"] for o in _dead_letters(result)] == ["x"]


def test_state_is_bounded_by_the_horizon() -> None:
    proc, state = processor(), new_state()
    preds = [prediction(f"e{i}", T0 + i, 0.5) for i in range(50)]
    run(proc, state, [preds] + [tick(T0 + m * MIN) for m in range(1, 200, 10)])
    # The 50 predictions expired at 2 h and their tombstones were dropped 1 h later.
    join = state.store(JOIN_STORE)
    remaining = {k for k, _ in join.items(0)}
    assert not remaining & {event_digest(f"e{i}") for i in range(50)}
    assert {event_digest("tick-p-" + str(T0 + 191 * MIN + 1) + "-0")} <= remaining


def test_bad_label_value_is_rejected() -> None:
    proc, state = processor(), new_state()
    result = run(proc, state, [[label("a", T0, 7)]])
    assert [r.reason for r in result.rejections] == ["validation.label"]


def test_a_late_label_and_its_copy_are_dead_lettered_alike_in_either_order() -> None:
    def dead(batches: list[list[Any]]) -> list[str]:
        result = run(processor(), new_state(), batches)
        letters = [r.reason for r in result.rejections]
        letters += [dict(o.headers)["dlq.error.class"].decode() for o in _dead_letters(result)]
        return sorted(letters)

    late_at = T0 + 1000 + 3 * HOUR
    first = [[prediction("a", T0 + 1000, 0.9)], [label("a", late_at, 1)], [label("a", late_at, 1)]]
    second = [[label("a", late_at, 1)], [label("a", late_at, 1)], [prediction("a", T0 + 1000, 0.9)]]
    assert dead(first) == dead(second) == ["late", "late"]


def test_a_prediction_with_a_score_out_of_range_is_rejected() -> None:
    proc, state = processor(), new_state()
    result = run(proc, state, [[prediction("a", T0, float("nan")), prediction("b", T0, 1.5)]])
    assert [r.reason for r in result.rejections] == ["validation.score"] * 2


def test_an_early_label_joined_later_leaves_no_trace_after_horizon_and_memory() -> None:
    proc, state = processor(), new_state()
    batches = [[label("a", T0 + 1000, 1)], [prediction("a", T0 + 2000, 0.9)]]
    batches += [tick(T0 + m * MIN) for m in range(1, 200, 7)]  # past 2 h horizon + 1 h memory
    result = run(proc, state, batches)
    assert event_digest("a") not in {k for k, _ in state.store(JOIN_STORE).items(0)}
    cumulative = _latest(result, window="cumulative")
    assert (cumulative["labeled"], cumulative["label_coverage"]) == (1, 1.0)
    assert not [o for o in _dead_letters(result) if o.value["event_id"] == "a"]


def test_an_empty_window_starts_at_each_boundary() -> None:
    proc, state = processor(), new_state()
    result = run(
        proc, state, [[prediction("a", T0 + 1000, 0.9)]] + [tick(T0 + m * MIN) for m in range(1, 5)]
    )
    for report in reports(result, route="primary", window="sliding", segment_field=None):
        assert report["labeled"] == 0
        assert report["window_start"] == report["window_end"]
