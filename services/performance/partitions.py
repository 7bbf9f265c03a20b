"""One partition's decoded state (:class:`PartitionView`), the event-time rules, the stores.

A :class:`PartitionView` mirrors a partition's ``metrics`` and ``meta`` stores in memory and
holds two indexes derived from them: the expiry index (interval -> join digests whose
deadline falls in it) and the release index (interval -> unreleased sample keys).
:class:`PartitionStores` loads a view from the stores and writes its changes back.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.performance.quality import NO_TIME, Cumulative
from services.performance.settings import PerformanceSettings
from services.performance.state_layout import (
    CORRECTION_PREFIX,
    COUNTS_GROUP,
    COUNTS_INTERVAL,
    CUMULATIVE_PREFIX,
    EARLY_LABEL,
    ENTRY_HEAD,
    GROUP,
    INTERVAL,
    INTERVAL_COUNTS,
    INTERVAL_COUNTS_PREFIX,
    JOIN_STORE,
    META_STORE,
    METRICS_STORE,
    MODEL_ID,
    MODEL_PREFIX,
    OTHER,
    OTHER_NAME,
    PENDING,
    PROGRESS_HEAD,
    PROGRESS_KEY,
    SAMPLE_MODEL,
    SAMPLE_PREFIX,
    SEGMENT_ID,
    SEGMENT_PREFIX,
    Correction,
    Group,
    ModelRoute,
    Sample,
    StateLayout,
    cumulative_key,
    interval_counts_key,
)
from streamml.state import KeyValueStore, State

log = logging.getLogger(__name__)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _ms(settings_value: Any) -> int:
    return int(settings_value.total_seconds() * 1000)


@dataclass(frozen=True, slots=True)
class EventTimeRules:
    """The settings' durations in milliseconds of event time."""

    label_horizon: int
    early_label_grace: int
    late_label_memory: int
    allowed_lateness: int
    report_interval: int
    window_duration: int
    count_window: bool
    window_size: int

    @classmethod
    def from_settings(cls, settings: PerformanceSettings) -> EventTimeRules:
        return cls(
            label_horizon=_ms(settings.label_horizon),
            early_label_grace=_ms(settings.early_label_grace),
            late_label_memory=_ms(settings.late_label_memory),
            allowed_lateness=_ms(settings.allowed_lateness),
            report_interval=_ms(settings.report_interval),
            window_duration=_ms(settings.window_duration),
            count_window=settings.window_kind == "count",
            window_size=settings.window_size,
        )

    def deadline(self, kind: int, time: int) -> int:
        """When a join entry expires: a prediction at its horizon, an early label at the end
        of its grace, a tombstone at the time it keeps."""
        if kind == PENDING:
            return time + self.label_horizon
        if kind == EARLY_LABEL:
            return time + self.early_label_grace
        return time


@dataclass
class PartitionView:
    """Decoded mirror of one partition's ``metrics`` and ``meta`` stores, plus the expiry index."""

    partition: int
    interval: int  # report_interval in ms: the unit of the expiry, release and counter indexes
    seq: int = 0
    marks: list[int] = field(default_factory=list)  # max event time per input topic
    boundary: int = NO_TIME
    min_ts: int = NO_TIME
    models: list[list[Any]] = field(default_factory=list)  # id -> [name, version, route, thr]
    model_ids: dict[ModelRoute, int] = field(default_factory=dict)
    segment_ids: list[dict[str, int]] = field(default_factory=list)
    segment_names: list[dict[int, str]] = field(default_factory=list)
    expiry: dict[int, list[bytes]] = field(default_factory=dict)
    samples: dict[bytes, Sample] = field(default_factory=dict)
    unreleased: set[bytes] = field(default_factory=set)
    # Unreleased sample keys by the interval their time falls in (ceil(ts / interval)), so a
    # boundary looks only at its due samples; may hold keys released since (skipped).
    release_index: dict[int, list[bytes]] = field(default_factory=dict)
    # Released samples per model id (key[SAMPLE_MODEL]) in (time, key) order: what pruning
    # drops first.
    released: dict[bytes, deque[tuple[int, bytes]]] = field(default_factory=dict)
    corrections: dict[bytes, Correction] = field(default_factory=dict)
    # Interval -> group -> [predictions, expired, corrections] counted in that interval.
    buckets: dict[int, dict[Group, list[int]]] = field(default_factory=dict)
    cumulative: dict[Group, Cumulative] = field(default_factory=dict)
    dirty_buckets: set[tuple[int, Group]] = field(default_factory=set)
    dirty_cumulative: set[Group] = field(default_factory=set)

    def watermark(self, required: Sequence[bool], lateness: int) -> int:
        """Smallest per-topic maximum; NO_TIME until every required topic has a record."""
        seen = []
        for mark, needed in zip(self.marks, required, strict=True):
            if mark != NO_TIME:
                seen.append(mark)
            elif needed:
                return NO_TIME
        return min(seen) - lateness

    def segment_name(self, field_index: int, value_id: int) -> str:
        if value_id == OTHER:
            return OTHER_NAME
        return self.segment_names[field_index].get(value_id, OTHER_NAME)

    def model_route(self, model_id: int) -> ModelRoute:
        name, version, route = self.models[model_id][:3]
        return (name, version, route)

    def effective_time(self, ts: int) -> int:
        """Event time of a contribution: never at or before a boundary already reported."""
        return ts if self.boundary == NO_TIME else max(ts, self.boundary + 1)

    def count(self, ts: int, groups: Iterable[Group], column: int) -> None:
        """One more prediction, expiry or correction (``column``) in the interval of ``ts``."""
        k = ceil_div(self.effective_time(ts), self.interval)
        bucket = self.buckets.get(k)
        if bucket is None:
            bucket = self.buckets[k] = {}
        for group in groups:
            counts = bucket.get(group)
            if counts is None:
                counts = bucket[group] = [0, 0, 0]
            counts[column] += 1
            self.dirty_buckets.add((k, group))

    def cumulative_of(self, group: Group) -> Cumulative:
        """The group's cumulative counters, marked to be written back."""
        cumulative = self.cumulative.get(group)
        if cumulative is None:
            cumulative = self.cumulative[group] = Cumulative()
        self.dirty_cumulative.add(group)
        return cumulative

    def index_expiry(self, digest: bytes, deadline: int) -> None:
        """List a join entry under the first boundary at or after its deadline."""
        k = ceil_div(deadline, self.interval)
        if self.boundary != NO_TIME:
            k = max(k, self.boundary // self.interval + 1)
        bucket = self.expiry.get(k)
        if bucket is None:
            self.expiry[k] = [digest]
        else:
            bucket.append(digest)

    def index_release(self, key: bytes, ts: int) -> None:
        """List an unreleased sample under the boundary that releases it."""
        k = -(-ts // self.interval)
        keys = self.release_index.get(k)
        if keys is None:
            self.release_index[k] = [key]
        else:
            keys.append(key)


class PartitionStores:
    """The bound state's three stores, and the views decoded from them."""

    def __init__(self, layout: StateLayout, rules: EventTimeRules, fields: int, topics: int):
        self._layout = layout
        self._rules = rules
        self._fields = fields
        self._topics = topics
        self._state: State | None = None
        # The bound state's stores (set by bind; these placeholders are never written).
        self.join = self.metrics = self.meta = KeyValueStore("unbound")

    def bind(self, state: State) -> bool:
        """Use ``state``'s stores; True when it is another state than before."""
        if state is self._state:
            return False
        self._state = state
        self.join = state.store(JOIN_STORE)
        self.metrics = state.store(METRICS_STORE)
        self.meta = state.store(META_STORE)
        return True

    def use(self, join: KeyValueStore, metrics: KeyValueStore, meta: KeyValueStore) -> None:
        """Use these stores (the merge stage's mirrors of source partitions)."""
        self._state = None
        self.join, self.metrics, self.meta = join, metrics, meta

    def stored_seq(self, partition: int) -> int:
        raw = self.meta.get(partition, PROGRESS_KEY)
        return PROGRESS_HEAD.unpack_from(raw)[0] if raw is not None else 0

    def load(self, partition: int) -> PartitionView:
        """The partition's view, decoded from its stores (indexes rebuilt)."""
        view = PartitionView(partition, self._rules.report_interval)
        view.marks = [NO_TIME] * self._topics
        view.segment_ids = [{} for _ in range(self._fields)]
        view.segment_names = [{} for _ in range(self._fields)]
        raw = self.meta.get(partition, PROGRESS_KEY)
        if raw is not None:
            view.seq, view.boundary, view.min_ts, *marks = self._layout.progress.unpack(raw)
            view.marks = list(marks)
        self._load_catalog(view)
        self._load_metrics(view)
        released: dict[bytes, list[tuple[int, bytes]]] = {}
        for key, s in view.samples.items():
            if key not in view.unreleased:
                released.setdefault(key[SAMPLE_MODEL], []).append((s.ts, key))
        view.released = {model: deque(sorted(items)) for model, items in released.items()}
        deadline = self._rules.deadline
        for key, value in self.join.items(partition):
            kind, at = ENTRY_HEAD.unpack_from(value)[:2]
            view.index_expiry(key, deadline(kind, at))
        return view

    def _load_catalog(self, view: PartitionView) -> None:
        models: dict[int, list[Any]] = {}
        for key, value in self.meta.items(view.partition):
            if key[:1] == MODEL_PREFIX:
                models[MODEL_ID.unpack(key[1:])[0]] = json.loads(value)
            elif key[:1] == SEGMENT_PREFIX:
                index, value_id = SEGMENT_ID.unpack(key[1:])
                if index < self._fields:
                    view.segment_ids[index][value.decode()] = value_id
                    view.segment_names[index][value_id] = value.decode()
        view.models = [models[i] for i in range(len(models))]
        view.model_ids = {(m[0], m[1], m[2]): i for i, m in enumerate(view.models)}

    def _load_metrics(self, view: PartitionView) -> None:
        layout = self._layout
        for key, value in self.metrics.items(view.partition):
            prefix, rest = key[:1], key[1:]
            if prefix == SAMPLE_PREFIX:
                sample = view.samples[rest] = layout.unpack_sample(value)
                if sample.ts > view.boundary:
                    view.unreleased.add(rest)
                    view.index_release(rest, sample.ts)
            elif prefix == CORRECTION_PREFIX:
                view.corrections[rest] = layout.unpack_correction(value)
            elif prefix == INTERVAL_COUNTS_PREFIX:
                k = INTERVAL.unpack(rest[COUNTS_INTERVAL])[0]
                group: Group = GROUP.unpack(rest[COUNTS_GROUP])
                view.buckets.setdefault(k, {})[group] = list(INTERVAL_COUNTS.unpack(value))
            elif prefix == CUMULATIVE_PREFIX:
                view.cumulative[GROUP.unpack(rest)] = Cumulative.unpack(value)

    def flush(self, view: PartitionView) -> None:
        """Write the view's changed counters and its progress record back."""
        p = view.partition
        for k, group in view.dirty_buckets:
            counts = view.buckets.get(k, {}).get(group)
            key = interval_counts_key(k, group)
            if counts is None:
                self.metrics.delete(p, key)
            else:
                self.metrics.put(p, key, INTERVAL_COUNTS.pack(*counts))
        for group in view.dirty_cumulative:
            self.metrics.put(p, cumulative_key(group), view.cumulative[group].pack())
        view.dirty_buckets.clear()
        view.dirty_cumulative.clear()
        self.meta.put(
            p,
            PROGRESS_KEY,
            self._layout.progress.pack(view.seq, view.boundary, view.min_ts, *view.marks),
        )
