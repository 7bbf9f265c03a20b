"""Declarative data-quality rules for events, checked after the schema (the codec).

A rule names a field and a constraint; :func:`check` returns the first violation as a
:class:`Violation` whose ``reason`` (``validation.<rule>``) becomes the dead-letter reason
and whose message names the field, the value and the rule.

Event-time plausibility is judged against the *partition's largest accepted event time*
(kept in the changelog-backed state), not against the wall clock or the Kafka record
timestamp: a replay, a redrive or a backfill days later gives the same verdict as the
first run, and a producer with a wrong clock cannot make good events look stale. The
first event of a partition is bounded by the absolute range rule on ``event_time``.
See docs/decisions/features-validation-event-time.md.

>>> check({"event_id": "", "entity_id": "c", "event_time": 0}, DEFAULT_RULES[:1]).reason
'validation.required'
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

from services.features.feature_set import CHANNELS, Columns, Event, as_columns, field_getter

MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_EVENT_TIME_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken rule: ``reason`` is low-cardinality, ``message`` is for humans."""

    reason: str
    field: str
    message: str


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Rule(ABC):
    """A constraint on one field (dotted path)."""

    field: str
    rule: ClassVar[str]

    @cached_property
    def get(self) -> Callable[[Event], Any]:
        return field_getter(self.field)

    @property
    def reason(self) -> str:
        return f"validation.{self.rule}"

    @abstractmethod
    def violated(self, value: Any) -> str | None:
        """Why ``value`` breaks the rule, or None when it is fine."""

    def passes_all(self, values: list[Any], types: set[type]) -> bool:
        """True only if every value passes (``types``: the set of their types).

        False means "some value may fail": the caller then asks :meth:`violated` value by
        value. Subclasses answer with C-level passes over the column where they can.
        """
        violated = self.violated
        return all(violated(v) is None for v in values)

    def check(self, event: Event) -> Violation | None:
        value = self.get(event)
        why = self.violated(value)
        if why is None:
            return None
        return Violation(
            self.reason, self.field, f"field {self.field}={_show(value)}: {why} (rule {self.rule})"
        )


@dataclass(frozen=True)
class Required(Rule):
    """Present, and not an empty or blank string."""

    rule = "required"

    def violated(self, value: Any) -> str | None:
        if value is None:
            return "is missing"
        if isinstance(value, str) and not value.strip():
            return "is empty"
        return None

    def passes_all(self, values: list[Any], types: set[type]) -> bool:
        if types == _STR:
            return all(map(str.strip, values))  # a blank string strips to ""
        if types <= _NUMBERS:
            return True  # neither None nor a string
        return super().passes_all(values, types)


@dataclass(frozen=True)
class Finite(Rule):
    """A number that is not NaN or infinite (Avro doubles allow both)."""

    rule = "finite"

    def violated(self, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "is not a number"
        return None if math.isfinite(value) else "is not finite"

    def passes_all(self, values: list[Any], types: set[type]) -> bool:
        if _NONE in types:  # None passes: judge the others
            values = [v for v in values if v is not None]
            types = types - {_NONE}
        if types <= _NUMBERS:
            return all(map(math.isfinite, values))
        return super().passes_all(values, types)


@dataclass(frozen=True)
class Range(Rule):
    """``lower <= x <= upper`` (``x > lower`` when ``lower_exclusive``); None passes."""

    lower: float | None = None
    upper: float | None = None
    lower_exclusive: bool = False
    rule = "range"

    def violated(self, value: Any) -> str | None:
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value):
            return None  # the finite rule reports it
        if self.lower is not None:
            if self.lower_exclusive and value <= self.lower:
                return f"must be > {self.lower:g}"
            if not self.lower_exclusive and value < self.lower:
                return f"must be >= {self.lower:g}"
        if self.upper is not None and value > self.upper:
            return f"must be <= {self.upper:g}"
        return None

    def passes_all(self, values: list[Any], types: set[type]) -> bool:
        if _NONE in types:  # None passes: judge the others
            values = [v for v in values if v is not None]
            types = types - {_NONE}
        if not values or not types <= _NUMBERS or not all(map(math.isfinite, values)):
            return super().passes_all(values, types)
        # Finite numbers: the bounds hold for all when they hold for the extremes.
        return self.violated(min(values)) is None and self.violated(max(values)) is None


@dataclass(frozen=True)
class Category(Rule):
    """One of ``allowed``."""

    allowed: tuple[str, ...] = ()
    rule = "category"

    @cached_property
    def _allowed(self) -> frozenset[str]:
        return frozenset(self.allowed)

    def violated(self, value: Any) -> str | None:
        if value is None or value in self._allowed:
            return None
        return f"must be one of {', '.join(self.allowed)}"

    def passes_all(self, values: list[Any], types: set[type]) -> bool:
        if types <= _STR_OR_NONE:
            return self._allowed.union((None,)).issuperset(values)
        return super().passes_all(values, types)


@dataclass(frozen=True)
class Length(Rule):
    """A string of ``min_chars`` to ``max_chars`` characters."""

    min_chars: int = 0
    max_chars: int = 256
    rule = "length"

    def violated(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        if not self.min_chars <= len(value) <= self.max_chars:
            return f"length {len(value)} is not in [{self.min_chars}, {self.max_chars}]"
        return None

    def passes_all(self, values: list[Any], types: set[type]) -> bool:
        if values and types == _STR:
            lengths = list(map(len, values))
            return self.min_chars <= min(lengths) and max(lengths) <= self.max_chars
        return super().passes_all(values, types)


@dataclass(frozen=True)
class Pattern(Rule):
    """A string matching ``regex`` in full (codes: currency, country, MCC)."""

    regex: str = ""
    rule = "pattern"

    @cached_property
    def _compiled(self) -> re.Pattern[str]:
        return re.compile(self.regex)

    def violated(self, value: Any) -> str | None:
        if not isinstance(value, str) or self._compiled.fullmatch(value):
            return None
        return f"does not match {self.regex}"

    @cached_property
    def _matched(self) -> set[str]:
        return set()

    def passes_all(self, values: list[Any], types: set[type]) -> bool:
        if types != _STR:
            return super().passes_all(values, types)
        # Codes repeat (currencies, countries): match each distinct new string once.
        matched = self._matched
        fullmatch = self._compiled.fullmatch
        for value in set(values).difference(matched):
            if not fullmatch(value):
                return False
            if len(matched) >= _PASSED_LIMIT:
                matched.clear()
            matched.add(value)
        return True


DEFAULT_RULES: tuple[Rule, ...] = (
    Required("event_id"),
    Required("entity_id"),
    Required("event_time"),
    Required("payload.amount"),
    Required("payload.currency"),
    Required("payload.country"),
    Required("payload.channel"),
    Required("payload.merchant_category"),
    Required("payload.merchant_id"),
    Length("event_id", min_chars=1, max_chars=128),
    Length("entity_id", min_chars=1, max_chars=128),
    Length("payload.merchant_id", min_chars=1, max_chars=64),
    Finite("payload.amount"),
    Range("payload.amount", lower=0.0, upper=1_000_000.0, lower_exclusive=True),
    Range("event_time", lower=MIN_EVENT_TIME_MS, upper=MAX_EVENT_TIME_MS),
    Range("payload.device_age_days", lower=0, upper=36_500),
    Range("payload.customer_age_years", lower=0, upper=130),
    Category("event_type", allowed=("card_transaction",)),
    Category("payload.channel", allowed=CHANNELS),
    Pattern("payload.currency", regex=r"[A-Z]{3}"),
    Pattern("payload.country", regex=r"[A-Z]{2}"),
    Pattern("payload.merchant_category", regex=r"[0-9]{4}"),
)
"""The rules of the demo domain, checked in this order; the first failure is reported."""


class RuleSet:
    """Rules compiled for the hot path: each field read once, no method lookups.

    Most events break no rule, so :meth:`check` first asks, field by field, whether every
    rule on that field passes; string values that passed are remembered per field
    (currencies, countries, channels repeat), which skips most rule calls. Only when a
    field fails are the rules run in their declared order, so the rule reported is the
    same one. This relies on what :meth:`Rule.violated` promises: its verdict depends on
    the value alone.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        fields = list(dict.fromkeys(rule.field for rule in self.rules))
        self._getters = tuple(field_getter(path) for path in fields)
        self._compiled = tuple(
            (fields.index(rule.field), rule.violated, rule) for rule in self.rules
        )
        # (outer, inner) for fields one level down (payload.amount), (field, None) for
        # top-level ones, (None, getter) for deeper paths; read inline below.
        self._by_field = tuple(
            (
                *_inline_path(path),
                tuple(rule.violated for rule in self.rules if rule.field == path),
                set[str](),
            )
            for path in fields
        )

    def check(self, event: Event) -> Violation | None:
        """The first rule ``event`` breaks, or None."""
        if self._passes(event):
            return None
        values = [get(event) for get in self._getters]
        for index, violated, rule in self._compiled:
            if violated(values[index]) is not None:
                return rule.check(event)
        return None

    @cached_property
    def _rules_by_field(self) -> tuple[tuple[str, tuple[Rule, ...]], ...]:
        fields = list(dict.fromkeys(rule.field for rule in self.rules))
        return tuple(
            (path, tuple(rule for rule in self.rules if rule.field == path)) for path in fields
        )

    def failing(self, events: Sequence[Event] | Columns) -> set[int]:
        """Indexes of the events that break some rule (:meth:`check` is not None for them).

        Column by column: each rule first asks whether the whole column passes (C-level
        passes: lengths, extremes, set inclusion); only a column where that fails is
        checked value by value. So a batch with no invalid event costs a few passes per
        field instead of a call per rule and event.
        """
        columns = as_columns(events)
        bad: set[int] = set()
        for path, rules in self._rules_by_field:
            values = columns[path]
            types = set(map(type, values))
            for rule in rules:
                if not rule.passes_all(values, types):
                    violated = rule.violated
                    bad.update(i for i, v in enumerate(values) if violated(v) is not None)
        return bad

    def _passes(self, event: Event) -> bool:
        for outer, inner, checks, passed in self._by_field:
            # Inline field_getter (a call per field is a fifth of the cost).
            if outer is None:
                value = inner(event)
            elif inner is None:
                value = event.get(outer)
            else:
                try:
                    value = event.get(outer).get(inner)  # type: ignore[union-attr]
                except AttributeError:
                    value = None
            if type(value) is str:
                if value in passed:
                    continue
                for violated in checks:
                    if violated(value) is not None:
                        return False
                if len(passed) >= _PASSED_LIMIT:
                    passed.clear()  # unique values (ids) must not grow it without bound
                passed.add(value)
                continue
            for violated in checks:
                if violated(value) is not None:
                    return False
        return True


def _inline_path(path: str) -> tuple[Any, Any]:
    parts = path.split(".")
    if len(parts) == 1:
        return parts[0], None
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, field_getter(path)


_PASSED_LIMIT = 16_384
_STR = {str}
_STR_OR_NONE = {str, type(None)}
_NUMBERS = {int, float}
_NONE = type(None)
_DEFAULT_SET = RuleSet(DEFAULT_RULES)


def check(event: Event, rules: Sequence[Rule] | RuleSet = DEFAULT_RULES) -> Violation | None:
    """The first rule ``event`` breaks, or None."""
    if isinstance(rules, RuleSet):
        return rules.check(event)
    if rules is DEFAULT_RULES:
        return _DEFAULT_SET.check(event)
    return RuleSet(rules).check(event)


@dataclass(frozen=True, slots=True)
class EventTimeBounds:
    """How far an event may be from the partition's largest accepted event time."""

    max_future_ms: int = 86_400_000
    max_past_ms: int = 7 * 86_400_000

    reason: ClassVar[str] = "validation.event_time"

    def check(self, event_time: int, partition_max: int | None) -> Violation | None:
        if partition_max is None:
            return None
        if event_time > partition_max + self.max_future_ms:
            ahead = (event_time - partition_max) / 1000.0
            return Violation(
                self.reason,
                "event_time",
                f"field event_time={event_time}: {ahead:.0f} s ahead of the partition's "
                f"latest event time {partition_max} (max {self.max_future_ms // 1000} s; "
                f"rule event_time)",
            )
        if event_time < partition_max - self.max_past_ms:
            behind = (partition_max - event_time) / 1000.0
            return Violation(
                self.reason,
                "event_time",
                f"field event_time={event_time}: {behind:.0f} s behind the partition's "
                f"latest event time {partition_max} (max {self.max_past_ms // 1000} s; "
                f"rule event_time)",
            )
        return None
