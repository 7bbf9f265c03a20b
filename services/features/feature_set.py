"""The feature set, declared once: name, version, content hash, transforms and aggregates.

A :class:`FeatureSet` is data. Its canonical JSON definition (every transform with its
parameters and implementation revision, the window lengths, the allowed lateness) is
hashed with SHA-256; the hash travels in every FeatureVector and in model metadata, so a
model never scores vectors built by a different definition. The ordered :attr:`names`
are the model's input order.

Two kinds of features:

* *stateless transforms* of the event itself (log, clip, bucketize, one-hot, hashed
  one-hot, cyclical time of day, indicators, optional numbers with a missing flag);
* *per-entity aggregates* over event-time windows of the entity's earlier events
  (count/sum/mean/std/min/max, time since the previous event, ratio to the running mean,
  history size). Windows are ``[t - W, t - L)`` for an event at ``t`` with allowed
  lateness ``L``: the last ``L`` milliseconds are left out because events there may
  still arrive, and only so are the aggregates the same for every arrival order within
  the lateness bound (docs/decisions/features-event-time-windows.md).

>>> fs = demo_feature_set()
>>> fs.names[:3]
('amount_log1p', 'amount_clipped', 'amount_bucket')
>>> len(fs.content_hash)
64
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cached_property, lru_cache
from itertools import repeat
from operator import mul, sub
from typing import Any, ClassVar, NamedTuple

import numpy as np

from services.features import native
from services.features.entity_state import NO_TIME, EntityHistory

Matrix = np.ndarray[Any, np.dtype[np.float64]]

Event = Mapping[str, Any]
TWO_PI = 2.0 * math.pi


def field_getter(path: str) -> Callable[[Event], Any]:
    """A fast accessor for a dotted field path (``payload.amount``); None when absent."""
    parts = tuple(path.split("."))
    if len(parts) == 1:
        (only,) = parts
        return lambda event: event.get(only)
    if len(parts) == 2:
        outer, inner = parts

        def get2(event: Event) -> Any:
            # EAFP: an isinstance(…, Mapping) check per field costs more than the lookup.
            try:
                return event.get(outer).get(inner)  # type: ignore[union-attr]
            except AttributeError:
                return None

        return get2

    def get_n(event: Event) -> Any:
        value: Any = event
        for part in parts:
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        return value

    return get_n


def _as_float(value: Any, default: float = 0.0) -> float:
    if value is None or isinstance(value, str):
        return default
    return float(value)


@lru_cache(maxsize=256)
def column_reader(path: str) -> Callable[[Sequence[Event]], list[Any]]:
    """Reads one field of every event into a list (None where absent), like field_getter."""
    parts = tuple(path.split("."))
    if len(parts) == 1:
        (only,) = parts
        return lambda events: [event.get(only) for event in events]
    if len(parts) == 2:
        outer, inner = parts

        def read2(events: Sequence[Event]) -> list[Any]:
            try:
                return [event[outer][inner] for event in events]
            except (KeyError, TypeError):
                get = field_getter(path)
                return [get(event) for event in events]

        return read2
    get = field_getter(path)
    return lambda events: [get(event) for event in events]


class Columns:
    """One batch of events, read field by field: each field path is read once, into a list
    (None where absent), and shared by whoever asks for it (rules, transforms)."""

    __slots__ = ("_read", "events")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self._read: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, path: str) -> list[Any]:
        column = self._read.get(path)
        if column is None:
            column = self._read[path] = column_reader(path)(self.events)
        return column


def as_columns(events: Sequence[Event] | Columns) -> Columns:
    return events if isinstance(events, Columns) else Columns(events)


# -- stateless transforms -------------------------------------------------------------


@dataclass(frozen=True)
class Transform(ABC):
    """A function of one event field to one or more named float features."""

    name: str
    field: str

    kind: ClassVar[str]
    revision: ClassVar[int] = 1
    """Bump when the computation changes without a parameter change (changes the hash)."""

    @property
    @abstractmethod
    def names(self) -> tuple[str, ...]:
        """Output feature names, in order."""

    @abstractmethod
    def compute(self, value: Any) -> Sequence[float]:
        """The features for the field's ``value`` (None when the field is missing)."""

    def columns(self, values: list[Any]) -> Matrix:
        """:meth:`compute` of every value, as rows of an ``(n, width)`` float64 matrix.

        The same numbers bit for bit (a test holds every transform to it); subclasses do
        it column-wise with C-level loops over the values, for a batch of events.
        """
        width = len(self.names)
        out = np.empty((len(values), width), dtype=np.float64)
        compute = self.compute
        for i, value in enumerate(values):
            out[i] = compute(value)
        return out

    @cached_property
    def get(self) -> Callable[[Event], Any]:
        return field_getter(self.field)

    def spec(self) -> dict[str, Any]:
        """The canonical definition: kind, revision and every parameter."""
        params = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"kind": self.kind, "revision": self.revision, **_jsonable(params)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class Log1p(Transform):
    """``log(1 + max(x, 0))``: compresses heavy-tailed amounts."""

    kind = "log1p"

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    def compute(self, value: Any) -> Sequence[float]:
        return (math.log1p(max(_as_float(value), 0.0)),)

    def columns(self, values: list[Any]) -> Matrix:
        if not _all_floats(values):
            return super().columns(values)
        out = np.fromiter(map(math.log1p, map(max, values, repeat(0.0))), np.float64, len(values))
        return out.reshape(-1, 1)


@dataclass(frozen=True)
class Clip(Transform):
    """``x`` limited to ``[lower, upper]``."""

    lower: float = 0.0
    upper: float = 1.0
    kind = "clip"

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    def compute(self, value: Any) -> Sequence[float]:
        return (min(max(_as_float(value), self.lower), self.upper),)

    def columns(self, values: list[Any]) -> Matrix:
        if not _all_floats(values):
            return super().columns(values)
        clipped = map(min, map(max, values, repeat(self.lower)), repeat(self.upper))
        return np.fromiter(clipped, np.float64, len(values)).reshape(-1, 1)


@dataclass(frozen=True)
class Bucketize(Transform):
    """Index of the bucket ``x`` falls in: 0 below ``boundaries[0]``, ``len`` above the last.

    A value equal to a boundary belongs to the bucket above it.
    """

    boundaries: tuple[float, ...] = ()
    kind = "bucketize"

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    def compute(self, value: Any) -> Sequence[float]:
        return (float(bisect_right(self.boundaries, _as_float(value))),)

    def columns(self, values: list[Any]) -> Matrix:
        if not _all_floats(values):
            return super().columns(values)
        buckets = map(bisect_right, repeat(self.boundaries), values)
        return np.fromiter(buckets, np.float64, len(values)).reshape(-1, 1)


@dataclass(frozen=True)
class Cyclical(Transform):
    """Sine and cosine of the position of an epoch-millisecond time within ``period_ms``.

    Hour of day with the default period: 23:59 and 00:01 end up close together.
    """

    period_ms: int = 86_400_000
    kind = "cyclical"

    @property
    def names(self) -> tuple[str, ...]:
        return (f"{self.name}_sin", f"{self.name}_cos")

    def compute(self, value: Any) -> Sequence[float]:
        angle = TWO_PI * ((int(value) % self.period_ms) / self.period_ms)
        return (math.sin(angle), math.cos(angle))

    def columns(self, values: list[Any]) -> Matrix:
        if not _all_of(values, int):
            return super().columns(values)
        period = self.period_ms
        angles = [TWO_PI * ((t % period) / period) for t in values]
        out = np.empty((len(values), 2), dtype=np.float64)
        out[:, 0] = np.fromiter(map(math.sin, angles), np.float64, len(angles))
        out[:, 1] = np.fromiter(map(math.cos, angles), np.float64, len(angles))
        return out


@dataclass(frozen=True)
class Indicator(Transform):
    """1.0 when the field is true, else 0.0."""

    kind = "indicator"

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    def compute(self, value: Any) -> Sequence[float]:
        return (1.0 if value else 0.0,)

    def columns(self, values: list[Any]) -> Matrix:
        return np.fromiter(map(bool, values), np.float64, len(values)).reshape(-1, 1)


@dataclass(frozen=True)
class OptionalNumber(Transform):
    """A nullable number: ``log1p`` of it clipped to ``[0, upper]`` (0 when missing), a
    missing flag, and a flag for ``x <= at_most`` (e.g. a device first seen a day ago)."""

    upper: float = 1e9
    at_most: float = 1.0
    kind = "optional_number"

    @property
    def names(self) -> tuple[str, ...]:
        return (f"{self.name}_log1p", f"{self.name}_missing", f"{self.name}_le_{self.at_most:g}")

    def compute(self, value: Any) -> Sequence[float]:
        if value is None:
            return (0.0, 1.0, 0.0)
        x = min(max(float(value), 0.0), self.upper)
        return (math.log1p(x), 0.0, 1.0 if x <= self.at_most else 0.0)

    def columns(self, values: list[Any]) -> Matrix:
        if not _all_of(values, int, float, type(None)):
            return super().columns(values)
        upper, at_most = self.upper, self.at_most
        out = np.zeros((len(values), 3), dtype=np.float64)
        present = [i for i, v in enumerate(values) if v is not None]
        if len(present) < len(values):
            missing = np.ones(len(values), dtype=bool)
            missing[present] = False
            out[missing, 1] = 1.0
        if present:
            xs = [min(max(float(values[i]), 0.0), upper) for i in present]
            out[present, 0] = np.fromiter(map(math.log1p, xs), np.float64, len(xs))
            out[present, 2] = np.fromiter((x <= at_most for x in xs), np.float64, len(xs))
        return out


@dataclass(frozen=True)
class OneHot(Transform):
    """One feature per known value, plus ``<name>=__other__`` for anything else."""

    values: tuple[str, ...] = ()
    kind = "one_hot"

    @property
    def names(self) -> tuple[str, ...]:
        return (*(f"{self.name}={v}" for v in self.values), f"{self.name}=__other__")

    @cached_property
    def _memo(self) -> dict[Any, tuple[float, ...]]:
        width = len(self.values) + 1
        return {
            v: tuple(1.0 if i == j else 0.0 for j in range(width))
            for i, v in enumerate(self.values)
        }

    @cached_property
    def _other(self) -> tuple[float, ...]:
        return (0.0,) * len(self.values) + (1.0,)

    def compute(self, value: Any) -> Sequence[float]:
        return self._memo.get(value, self._other)

    @cached_property
    def _index(self) -> dict[Any, int]:
        return {v: i for i, v in enumerate(self.values)}

    def columns(self, values: list[Any]) -> Matrix:
        hot = np.fromiter(
            map(self._index.get, values, repeat(len(self.values))), np.intp, len(values)
        )
        return _one_hot(hot, len(self.values) + 1)


@lru_cache(maxsize=65_536)
def stable_bucket(value: str, buckets: int) -> int:
    """A bucket for ``value`` that is the same in every process and Python version.

    (``hash()`` of a str is salted per process, so it cannot be used for features.)
    """
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


@dataclass(frozen=True)
class HashedOneHot(Transform):
    """The hashing trick: ``value`` sets one of ``buckets`` features (open vocabularies)."""

    buckets: int = 16
    kind = "hashed_one_hot"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}#{i}" for i in range(self.buckets))

    @cached_property
    def _memo(self) -> dict[Any, tuple[float, ...]]:
        return {}

    def compute(self, value: Any) -> Sequence[float]:
        memo = self._memo
        found = memo.get(value)
        if found is None:
            if len(memo) >= 65_536:  # open vocabulary: keep the cache bounded
                memo.clear()
            hot = stable_bucket(str(value or ""), self.buckets)
            found = memo[value] = tuple(1.0 if i == hot else 0.0 for i in range(self.buckets))
        return found

    @cached_property
    def _hot(self) -> dict[Any, int]:
        return {}

    def columns(self, values: list[Any]) -> Matrix:
        known = self._hot
        if len(known) >= 65_536:  # open vocabulary: keep the cache bounded
            known.clear()
        for value in set(values).difference(known):
            known[value] = stable_bucket(str(value or ""), self.buckets)
        hot = np.fromiter(map(known.__getitem__, values), np.intp, len(values))
        return _one_hot(hot, self.buckets)


def _one_hot(hot: np.ndarray[Any, np.dtype[np.intp]], width: int) -> Matrix:
    out = np.zeros((len(hot), width), dtype=np.float64)
    out[np.arange(len(hot)), hot] = 1.0
    return out


def _all_floats(values: list[Any]) -> bool:
    """Every value is exactly a float (what a decoded Avro double is)."""
    return not values or set(map(type, values)) == _FLOAT_ONLY


_FLOAT_ONLY = {float}


def _all_of(values: list[Any], *types: type) -> bool:
    return set(map(type, values)) <= set(types)


# -- per-entity aggregates ---------------------------------------------------------------


class EntityContext(NamedTuple):
    """What an aggregate may look at for one event: the entity's history before it.

    A named tuple, not a dataclass: one is built per event, and a tuple is the cheapest.
    """

    history: EntityHistory
    event_time: int
    value: float
    settled_end: int
    """``event_time - allowed_lateness``: events at or after this are not used."""
    settled_count: int
    settled_sum: float
    settled_last: int
    settled_index: int
    """``bisect_left(history.times, settled_end)``: the settled events are
    ``history.times[:settled_index]`` (plus the evicted summary)."""


@dataclass(frozen=True)
class Aggregate(ABC):
    """Features of an entity's earlier events."""

    name: str

    kind: ClassVar[str]
    revision: ClassVar[int] = 1

    @property
    @abstractmethod
    def names(self) -> tuple[str, ...]: ...

    @property
    def longest_window_ms(self) -> int:
        return 0

    @abstractmethod
    def compute(self, ctx: EntityContext) -> Sequence[float]: ...

    def spec(self) -> dict[str, Any]:
        params = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"kind": self.kind, "revision": self.revision, **_jsonable(params)}


WINDOW_STATS = ("count", "sum", "mean", "std", "min", "max")


def window_stats(values: Sequence[float]) -> tuple[float, float, float, float, float, float]:
    """(count, sum, mean, std, min, max) of ``values``; all 0.0 when empty.

    Sums are exactly rounded (``math.fsum``) and the standard deviation is the population
    one, computed in two passes; so the result depends only on the multiset of values.

    >>> window_stats([1.0, 3.0])
    (2.0, 4.0, 2.0, 1.0, 1.0, 3.0)
    """
    n = len(values)
    if not n:
        return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if n == 1:  # the same numbers as below, cheaper: fsum([v]) is v (and -0.0 gives 0.0)
        only = values[0]
        total = only + 0.0
        return (1.0, total, total, 0.0, only, only)
    total = math.fsum(values)
    mean = total / n
    deviations = list(map(sub, values, repeat(mean)))  # C-level: v - mean, squared below
    std = math.sqrt(math.fsum(map(mul, deviations, deviations)) / n)
    return (float(n), total, mean, std, min(values), max(values))


@dataclass(frozen=True)
class WindowStats(Aggregate):
    """count/sum/mean/std/min/max of the value over each window ``[t - W, t - L)``."""

    windows: tuple[tuple[str, int], ...] = (("10m", 600_000),)
    kind = "window_stats"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(
            f"{self.name}_{label}_{stat}" for label, _ in self.windows for stat in WINDOW_STATS
        )

    @property
    def longest_window_ms(self) -> int:
        return max(ms for _, ms in self.windows)

    def compute(self, ctx: EntityContext) -> Sequence[float]:
        out: list[float] = []
        times = ctx.history.times
        values = ctx.history.values
        end = ctx.settled_index  # every window ends where the settled events end
        first = -1
        stats: tuple[float, ...] = ()
        for _, length in self.windows:
            start = bisect_left(times, ctx.event_time - length, 0, end)
            if start != first:  # the same first index is the same values: same stats
                stats = window_stats(values[start:end])
                first = start
            out.extend(stats)
        return out


@dataclass(frozen=True)
class SecondsSincePrevious(Aggregate):
    """``log1p`` of the seconds since the entity's previous settled event (capped)."""

    cap_s: float = 30 * 86_400.0
    kind = "seconds_since_previous"

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    def compute(self, ctx: EntityContext) -> Sequence[float]:
        if ctx.settled_last == NO_TIME:
            return (math.log1p(self.cap_s),)
        seconds = min((ctx.event_time - ctx.settled_last) / 1000.0, self.cap_s)
        return (math.log1p(seconds),)


@dataclass(frozen=True)
class RatioToRunningMean(Aggregate):
    """The event's value over the mean of all the entity's settled values (1.0 if none)."""

    kind = "ratio_to_running_mean"

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    def compute(self, ctx: EntityContext) -> Sequence[float]:
        if not ctx.settled_count or ctx.settled_sum <= 0.0:
            return (1.0,)
        return (ctx.value / (ctx.settled_sum / ctx.settled_count),)


@dataclass(frozen=True)
class HistoryCount(Aggregate):
    """``log1p`` of how many settled events the entity has (how much the ratios mean)."""

    kind = "history_count"

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    def compute(self, ctx: EntityContext) -> Sequence[float]:
        return (math.log1p(ctx.settled_count),)


# -- the feature set --------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSet:
    """A named, versioned, hashed list of transforms and aggregates."""

    name: str
    version: str
    value_field: str
    """The numeric field the per-entity aggregates are computed over."""
    allowed_lateness_ms: int
    transforms: tuple[Transform, ...]
    aggregates: tuple[Aggregate, ...]
    categories: tuple[tuple[str, str], ...] = ()
    """(name, field) of raw categorical attributes carried in each vector."""

    def __post_init__(self) -> None:
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"feature set {self.name}: duplicate feature names")
        if self.allowed_lateness_ms < 0:
            raise ValueError("allowed_lateness_ms must be >= 0")
        shortest = min(
            (ms for a in self.aggregates if isinstance(a, WindowStats) for _, ms in a.windows),
            default=None,
        )
        if shortest is not None and self.allowed_lateness_ms >= shortest:
            raise ValueError(
                f"allowed lateness {self.allowed_lateness_ms} ms must be shorter than the "
                f"shortest window ({shortest} ms)"
            )

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Feature names in model input order."""
        out: list[str] = []
        for transform in self.transforms:
            out.extend(transform.names)
        for aggregate in self.aggregates:
            out.extend(aggregate.names)
        return tuple(out)

    @cached_property
    def longest_window_ms(self) -> int:
        return max((a.longest_window_ms for a in self.aggregates), default=0)

    @cached_property
    def warmup_ms(self) -> dict[str, int]:
        """Per history feature, the event time after a stream starts before its values are
        comparable with a reference of warm histories: a window feature's window, a feature
        of the whole history (count, gap, running mean) the longest window. Features of the
        event alone are comparable at once and are not listed."""
        out: dict[str, int] = {}
        for aggregate in self.aggregates:
            if isinstance(aggregate, WindowStats):
                for label, length in aggregate.windows:
                    for stat in WINDOW_STATS:
                        out[f"{aggregate.name}_{label}_{stat}"] = length
            else:
                for name in aggregate.names:
                    out[name] = self.longest_window_ms
        return out

    @cached_property
    def retention_ms(self) -> int:
        """How long before the entity's watermark an event can still be needed."""
        return self.longest_window_ms + self.allowed_lateness_ms

    def definition(self) -> dict[str, Any]:
        """The canonical definition the content hash is computed over."""
        return {
            "name": self.name,
            "version": self.version,
            "value_field": self.value_field,
            "allowed_lateness_ms": self.allowed_lateness_ms,
            "transforms": [t.spec() for t in self.transforms],
            "aggregates": [a.spec() for a in self.aggregates],
            "categories": [list(c) for c in self.categories],
        }

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`definition`."""
        canonical = json.dumps(
            self.definition(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    @cached_property
    def _value_getter(self) -> Callable[[Event], Any]:
        return field_getter(self.value_field)

    @cached_property
    def _category_getters(self) -> tuple[tuple[str, Callable[[Event], Any]], ...]:
        return tuple((name, field_getter(path)) for name, path in self.categories)

    def value_of(self, event: Event) -> float:
        return float(self._value_getter(event))

    @cached_property
    def _stateless_steps(self) -> tuple[tuple[Any, Any, Callable[[Any], Sequence[float]]], ...]:
        # (outer, inner, compute) for a field one level down, (field, None, compute) for a
        # top-level one, (None, getter, compute) for deeper paths: read inline below.
        steps: list[tuple[Any, Any, Callable[[Any], Sequence[float]]]] = []
        for t in self.transforms:
            parts = t.field.split(".")
            if len(parts) <= 2:
                steps.append((parts[0], parts[1] if len(parts) == 2 else None, t.compute))
            else:
                steps.append((None, t.get, t.compute))
        return tuple(steps)

    @cached_property
    def _aggregate_steps(self) -> tuple[Callable[[EntityContext], Sequence[float]], ...]:
        return tuple(a.compute for a in self.aggregates)

    def stateless(self, event: Event) -> list[float]:
        out: list[float] = []
        extend = out.extend
        for outer, inner, compute in self._stateless_steps:
            # field_getter, inlined: a call per transform is a sixth of the cost.
            if outer is None:
                value = inner(event)
            elif inner is None:
                value = event.get(outer)
            else:
                try:
                    value = event.get(outer).get(inner)  # type: ignore[union-attr]
                except AttributeError:
                    value = None
            extend(compute(value))
        return out

    @cached_property
    def stateless_width(self) -> int:
        """How many of :attr:`names` come from the stateless transforms (the first ones)."""
        return sum(len(t.names) for t in self.transforms)

    def stateless_matrix(self, events: Sequence[Event] | Columns) -> Matrix:
        """:meth:`stateless` of every event, as the rows of an ``(n, stateless_width)`` matrix.

        Bit for bit the same numbers, computed transform by transform over the batch.
        Raises what :meth:`stateless` would raise for some event (an invalid one).
        """
        columns = as_columns(events)
        out = np.empty((len(columns), self.stateless_width), dtype=np.float64)
        at = 0
        for transform in self.transforms:
            block = transform.columns(columns[transform.field])
            width = block.shape[1]
            out[:, at : at + width] = block
            at += width
        return out

    @cached_property
    def _native_plan(self) -> tuple[tuple[Any, ...], ...] | None:
        """The aggregates as steps of the C kernel, or None if it cannot compute them all."""
        if native.KERNEL is None:
            return None
        steps: list[tuple[Any, ...]] = []
        for aggregate in self.aggregates:
            kind = type(aggregate)  # exact types: a subclass may compute something else
            if kind is WindowStats:
                windows = aggregate.windows  # type: ignore[attr-defined]
                steps.append((0, tuple(int(ms) for _, ms in windows)))
            elif kind is SecondsSincePrevious:
                steps.append((1, aggregate.cap_s))  # type: ignore[attr-defined]
            elif kind is RatioToRunningMean:
                steps.append((2,))
            elif kind is HistoryCount:
                steps.append((3,))
            else:
                return None
        return tuple(steps)

    def stateful_bytes(self, history: EntityHistory, event_time: int, value: float) -> bytes:
        """:meth:`stateful` as little-endian float64 bytes (the C kernel's when it can)."""
        plan = self._native_plan
        if plan is not None:
            packed = native.KERNEL.aggregates(  # type: ignore[union-attr]
                history.times,
                history.values,
                history.partials,
                history.count_evicted,
                history.last_evicted,
                event_time,
                value,
                self.allowed_lateness_ms,
                plan,
            )
            if packed is not None:
                return packed  # type: ignore[no-any-return]
        values = self.stateful(history, event_time, value)
        return struct.pack(f"<{len(values)}d", *values)

    def stateful(self, history: EntityHistory, event_time: int, value: float) -> list[float]:
        """The aggregates for an event at ``event_time``, from the history *before* it."""
        settled_end = event_time - self.allowed_lateness_ms
        index = bisect_left(history.times, settled_end)
        count, total, last = history.settled_up_to(index)
        ctx = EntityContext(history, event_time, value, settled_end, count, total, last, index)
        out: list[float] = []
        extend = out.extend
        for compute in self._aggregate_steps:
            extend(compute(ctx))
        return out

    def categories_of(self, event: Event) -> dict[str, str]:
        return {name: str(get(event) or "") for name, get in self._category_getters}

    @cached_property
    def _category_memo(self) -> dict[tuple[Any, ...], dict[str, str]]:
        return {}

    def categories_many(self, events: Sequence[Event] | Columns) -> list[dict[str, str]]:
        """:meth:`categories_of` of every event. Events with the same raw values share one
        dict (the combinations repeat): read them, never change them."""
        columns = as_columns(events)
        if not self.categories:
            return [{} for _ in range(len(columns))]
        names = [name for name, _ in self.categories]
        memo = self._category_memo
        if len(memo) >= 65_536:
            memo.clear()
        out = []
        for raw in zip(*(columns[path] for _, path in self.categories), strict=True):
            found = memo.get(raw)
            if found is None:
                found = memo[raw] = {name: str(v or "") for name, v in zip(names, raw, strict=True)}
            out.append(found)
        return out


DEMO_WINDOWS = (("10m", 600_000), ("1h", 3_600_000), ("24h", 86_400_000))
CHANNELS = ("pos", "ecommerce", "atm", "moto")
DEFAULT_LATENESS_MS = 5_000


def demo_feature_set(allowed_lateness_ms: int = DEFAULT_LATENESS_MS) -> FeatureSet:
    """The card-fraud feature set of the demo domain (schemas/event.avsc)."""
    return FeatureSet(
        name="card_fraud",
        version="1",
        value_field="payload.amount",
        allowed_lateness_ms=allowed_lateness_ms,
        transforms=(
            Log1p("amount_log1p", "payload.amount"),
            Clip("amount_clipped", "payload.amount", lower=0.0, upper=10_000.0),
            Bucketize(
                "amount_bucket", "payload.amount", boundaries=(10.0, 50.0, 100.0, 500.0, 2000.0)
            ),
            Cyclical("hour_of_day", "event_time", period_ms=86_400_000),
            Cyclical("day_of_week", "event_time", period_ms=7 * 86_400_000),
            Indicator("card_present", "payload.card_present"),
            OptionalNumber("device_age_days", "payload.device_age_days", upper=36_500, at_most=1),
            OptionalNumber(
                "customer_age_years", "payload.customer_age_years", upper=130, at_most=21
            ),
            OneHot("channel", "payload.channel", values=CHANNELS),
            HashedOneHot("country", "payload.country", buckets=32),
            HashedOneHot("merchant_category", "payload.merchant_category", buckets=16),
        ),
        aggregates=(
            WindowStats("amount", windows=DEMO_WINDOWS),
            SecondsSincePrevious("seconds_since_previous_log1p"),
            RatioToRunningMean("amount_to_running_mean"),
            HistoryCount("history_count_log1p"),
        ),
        categories=(
            ("country", "payload.country"),
            ("channel", "payload.channel"),
            ("merchant_category", "payload.merchant_category"),
            ("currency", "payload.currency"),
        ),
    )
