"""Declarative validation rules: each rule, its reason and a message naming field and value."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.features.validation import (
    DEFAULT_RULES,
    Category,
    EventTimeBounds,
    Finite,
    Length,
    Pattern,
    Range,
    Required,
    RuleSet,
    check,
)
from streamml.synthetic import generate_events


def _event() -> dict[str, Any]:
    return copy.deepcopy(next(generate_events(1, seed=1))[0])


def _with(path: str, value: Any) -> dict[str, Any]:
    event = _event()
    target = event
    *outer, last = path.split(".")
    for part in outer:
        target = target[part]
    target[last] = value
    return event


def test_a_generated_event_is_valid() -> None:
    assert check(_event()) is None


# One broken record per rule: (field, bad value, reason, words the message must contain).
BROKEN = [
    ("event_id", "", "validation.required", "event_id"),
    ("entity_id", "   ", "validation.required", "entity_id"),
    ("payload.merchant_id", None, "validation.required", "merchant_id"),
    ("event_id", "x" * 129, "validation.length", "length 129"),
    ("payload.amount", math.nan, "validation.finite", "nan"),
    ("payload.amount", math.inf, "validation.finite", "inf"),
    ("payload.amount", 0.0, "validation.range", "> 0"),
    ("payload.amount", 2e6, "validation.range", "<= 1e+06"),
    ("payload.device_age_days", -3, "validation.range", ">= 0"),
    ("event_time", 5, "validation.range", "event_time=5"),
    ("payload.channel", "telepathy", "validation.category", "telepathy"),
    ("event_type", "refund", "validation.category", "refund"),
    ("payload.currency", "euro", "validation.pattern", "euro"),
    ("payload.country", "Germany", "validation.pattern", "Germany"),
    ("payload.merchant_category", "54a1", "validation.pattern", "54a1"),
]


@pytest.mark.parametrize(("path", "value", "reason", "words"), BROKEN)
def test_each_rule_rejects_with_its_reason_and_names_field_and_value(
    path: str, value: Any, reason: str, words: str
) -> None:
    violation = check(_with(path, value))
    assert violation is not None
    assert violation.reason == reason
    assert violation.field == path
    assert path in violation.message and words in violation.message
    assert f"rule {reason.split('.')[1]}" in violation.message


def test_every_rule_kind_is_exercised() -> None:
    kinds = {type(rule) for rule in DEFAULT_RULES}
    assert kinds == {Required, Length, Finite, Range, Category, Pattern}
    assert {reason for _, _, reason, _ in BROKEN} == {rule.reason for rule in DEFAULT_RULES}


def test_optional_fields_may_be_null() -> None:
    assert check(_with("payload.device_age_days", None)) is None
    assert check(_with("payload.customer_age_years", None)) is None


def test_first_broken_rule_wins() -> None:
    event = _with("payload.amount", -1.0)
    event["event_id"] = ""
    assert check(event).reason == "validation.required"  # type: ignore[union-attr]


def test_event_time_bounds_are_relative_to_the_partition_maximum() -> None:
    bounds = EventTimeBounds(max_future_ms=1_000, max_past_ms=10_000)
    assert bounds.check(123, None) is None
    assert bounds.check(100_000 + 1_000, 100_000) is None
    assert bounds.check(100_000 - 10_000, 100_000) is None
    ahead = bounds.check(100_000 + 1_001, 100_000)
    behind = bounds.check(100_000 - 10_001, 100_000)
    assert (
        ahead is not None and ahead.reason == "validation.event_time" and "ahead" in ahead.message
    )
    assert (
        behind is not None and "behind" in behind.message and "event_time=89999" in behind.message
    )


def test_range_ignores_non_numbers_and_finite_catches_them() -> None:
    assert Range("x", lower=0).violated("abc") is None
    assert Finite("x").violated("abc") == "is not a number"
    assert Finite("x").violated(True) == "is not a number"


def _first_broken_rule(event: dict[str, Any]) -> Any:
    """The plain definition: rules in declared order, the first that fails."""
    for rule in DEFAULT_RULES:
        violation = rule.check(event)
        if violation is not None:
            return violation
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([r.field for r in DEFAULT_RULES]),
            st.none()
            | st.sampled_from(["", " ", "EUR", "eur", "DE", "pos", "x" * 200, "5411"])
            | st.integers(-5, 200)
            | st.floats(allow_nan=True)
            | st.booleans(),
        ),
        max_size=3,
    )
)
def test_compiled_rule_set_reports_the_rule_the_declared_order_does(
    changes: list[tuple[str, Any]],
) -> None:
    # One RuleSet across examples: values it remembered as passing must not hide a failure.
    event = _event()
    for path, value in changes:
        event = _with_event(event, path, value)
    assert _SHARED.check(event) == _first_broken_rule(event)


_SHARED = RuleSet(DEFAULT_RULES)


def _with_event(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    event = copy.deepcopy(event)
    target = event
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    target[last] = value
    return event


_VALUES = (
    st.none()
    | st.sampled_from(["", " ", "EUR", "eur", "DE", "pos", "x" * 200, "5411", "card_transaction"])
    | st.integers(-5, 200)
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True)
    | st.booleans()
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from([r.field for r in DEFAULT_RULES]), _VALUES), max_size=2),
        min_size=1,
        max_size=30,
    )
)
def test_failing_marks_exactly_the_events_check_rejects(
    changes: list[list[tuple[str, Any]]],
) -> None:
    # The batch's column-wise verdict equals the event-by-event one, so the processor can
    # skip the ordered check for every event not marked (one RuleSet across examples, so
    # the strings remembered as passing are exercised too).
    events = []
    for event_changes in changes:
        event = _event()
        for path, value in event_changes:
            event = _with_event(event, path, value)
        events.append(event)
    expected = {i for i, event in enumerate(events) if _first_broken_rule(event) is not None}
    assert _SHARED.failing(events) == expected


def test_failing_on_a_clean_batch_and_on_one_bad_value() -> None:
    events = [e for e, _ in generate_events(300, seed=5)]
    rules = RuleSet(DEFAULT_RULES)
    assert rules.failing(events) == set()
    events[117] = _with_event(events[117], "payload.country", "Germany")
    events[200] = _with_event(events[200], "payload.amount", -1.0)
    assert rules.failing(events) == {117, 200}
    assert rules.failing([]) == set()
