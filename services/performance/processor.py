"""The performance service's pure core: join late labels to predictions, report live quality.

Inputs (co-partitioned by entity_id, partition ``p`` of every topic on one instance):
``predictions`` and ``predictions.shadow`` (Prediction) and ``labels`` (Label). The join is
by event_id, in either order:

- a prediction waits for its label until ``event_time + label_horizon``; then it counts as
  unlabeled (label coverage) and is remembered as a 16-byte tombstone for
  ``late_label_memory``, so a label arriving in that time is rejected as ``late``;
- a label that comes first waits ``early_label_grace`` past its ``labeled_at``; if no
  prediction comes it goes to ``labels.dlq`` as ``orphan``; a label whose
  ``labeled_at - event_time`` is over the horizon is rejected as ``late``;
- a second label with another value is a correction (metrics use the latest, it is
  counted); an identical label and a second prediction for the same event_id and route are
  duplicates and ignored. An entry keeps its label history, so a prediction that joins
  late replays the first label and each correction at their own event times.

Time is event time only. Each partition keeps a watermark per input stream (max event time
seen); the service watermark is the smallest of them minus ``allowed_lateness``. Every
contribution to a metric carries an event time and is applied only when the watermark
passes the report boundary after it, and reports are emitted at multiples of
``report_interval``: so the report sequence is a function of the input streams, not of how
the consumer interleaved them, and a killed and restarted instance emits the same reports.

State (three stores, all bytes with explicit ``struct`` layouts, committed with offsets):
``join`` holds one packed entry per event_id (key: 16-byte BLAKE2b digest); ``metrics``
holds the joined samples of the sliding window, pending corrections, per-interval counters
and cumulative counters; ``meta`` holds watermarks, the model and segment-value tables and
the alert state. An in-memory expiry index (time bucket -> digests) is derived from
``join`` and rebuilt whenever the store and the index disagree (restore, aborted batch).
Why each rule is what it is: docs/decisions/performance-*.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.performance.alerts import SloMonitor
from services.performance.calibrations import estimator_from_settings
from services.performance.estimation import Estimator
from services.performance.quality import (
    NO_TIME,
    Cumulative,
    SampleTerms,
    sample_terms,
    sorted_percentile,
    window_metrics,
)
from services.performance.settings import PerformanceSettings
from streamml.deadletter import dead_letter_headers, dlq_topic
from streamml.errors import StreamMLError
from streamml.processor import Output, Processor, Record, Rejection, Result
from streamml.state import KeyValueStore, State

log = logging.getLogger(__name__)

JOIN_STORE = "join"
METRICS_STORE = "metrics"
META_STORE = "meta"

PENDING = 1  # one or more predictions, with or without their label
TOMBSTONE = 2  # an expired event, remembered to tell a late label from an orphan
EARLY_LABEL = 3  # a label waiting for its prediction

NO_LABEL = -1
MODEL_LEVEL = 255  # segment field index of the all-traffic group
OTHER = 0  # segment value id of "other" (values past the cap)
OTHER_NAME = "other"
MISSING_NAME = "unknown"

_HEAD = struct.Struct("<BqBB")  # kind, time, labels in the history, predictions
_LABEL = struct.Struct("<bqB")  # label, labeled_at, identical repeats while waiting
MAX_LABELS = 16  # first label + corrections kept per event
_ORIGIN = struct.Struct("<qqiHHHH")  # offset, timestamp, partition, 4 string lengths
_W = struct.Struct("<qqq")  # seq, boundary, min ts; then one watermark per input topic
_GROUP = struct.Struct("<HBH")  # model id, segment field index, segment value id
_BUCKET_KEY = struct.Struct("<q")
_BUCKET = struct.Struct("<qqq")  # predictions, expired, corrections
_MODEL_ID = struct.Struct("<H")
_SEG_ID = struct.Struct("<BH")

_K_W = b"W"
_K_ALERTS = b"A"
_P_MODEL = b"M"
_P_SEG = b"V"
_P_SAMPLE = b"S"
_P_CORRECTION = b"C"
_P_BUCKET = b"B"
_P_CUMULATIVE = b"U"

Group = tuple[int, int, int]
_BY_TIME = operator.itemgetter(0, 1)  # window samples in (time, digest) order
Prediction = tuple[int, float, bool, tuple[int, ...]]  # model id, score, decision, segment ids


_DIGEST = hashlib.blake2b(digest_size=16)


def event_digest(event_id: str) -> bytes:
    """The 16-byte key of an event_id in the join store (BLAKE2b-128 of its UTF-8 bytes;
    a copy of a prepared hasher gives the same bytes as building one, in half the time)."""
    hasher = _DIGEST.copy()
    hasher.update(event_id.encode())
    return hasher.digest()


@dataclass(slots=True)
class LabelOrigin:
    """What a waiting label needs to be dead-lettered later (its record is long gone)."""

    event_id: str
    entity_id: str
    source: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(slots=True)
class Entry:
    kind: int
    time: int  # PENDING: event time; EARLY_LABEL: first labeled_at; TOMBSTONE: its deadline
    predictions: list[Prediction] = field(default_factory=list)
    # (label, labeled_at, repeats) in arrival order; repeats counts identical copies that came
    # while the label waited for its prediction (they are dead-lettered with it if it is late).
    labels: list[tuple[int, int, int]] = field(default_factory=list)
    origin: LabelOrigin | None = None

    @property
    def label(self) -> int:
        """The latest label, or NO_LABEL."""
        return self.labels[-1][0] if self.labels else NO_LABEL


@dataclass(slots=True)
class Sample:
    """One joined prediction in the sliding window (and not yet in cumulative if ts > boundary)."""

    ts: int
    score: float
    decision: bool
    label: int
    delay: int
    segments: tuple[int, ...]


@dataclass(slots=True)
class Correction:
    """A label change waiting for the watermark; ``old`` is the label it replaces."""

    ts: int
    old: int
    new: int
    score: float
    decision: bool
    segments: tuple[int, ...]


@dataclass
class PartitionView:
    """Decoded mirror of one partition's ``metrics`` and ``meta`` stores, plus the expiry index."""

    partition: int
    seq: int = 0
    marks: list[int] = field(default_factory=list)  # max event time per input topic
    boundary: int = NO_TIME
    min_ts: int = NO_TIME
    models: list[list[Any]] = field(default_factory=list)  # id -> [name, version, route, thr]
    model_ids: dict[tuple[str, str, str], int] = field(default_factory=dict)
    segment_ids: list[dict[str, int]] = field(default_factory=list)
    segment_names: list[dict[int, str]] = field(default_factory=list)
    expiry: dict[int, list[bytes]] = field(default_factory=dict)
    samples: dict[bytes, Sample] = field(default_factory=dict)
    unreleased: set[bytes] = field(default_factory=set)
    # Unreleased sample keys by the interval their time falls in (ceil(ts / interval)), so a
    # boundary looks only at its due samples; may hold keys released since (skipped).
    release_index: dict[int, list[bytes]] = field(default_factory=dict)
    # Released samples per model id (key[16:]) in (time, key) order: what pruning drops first.
    released: dict[bytes, deque[tuple[int, bytes]]] = field(default_factory=dict)
    corrections: dict[bytes, Correction] = field(default_factory=dict)
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


class _Window:
    """A sliding window's samples in (time, digest) order, as numpy columns: samples are
    added at the end (in that order) and dropped at the front. A segment value's samples
    are picked with a mask, so they keep the window's order."""

    __slots__ = ("codes", "decision", "delay", "label", "score", "segments", "ts")

    def __init__(self, fields: int) -> None:
        self.ts = np.empty(0, dtype=np.int64)
        self.score = np.empty(0, dtype=np.float64)
        self.decision = np.empty(0, dtype=bool)
        self.label = np.empty(0, dtype=np.int64)
        self.delay = np.empty(0, dtype=np.float64)
        self.segments = np.empty((fields, 0), dtype=np.int32)
        # Per segment field: reported value name -> its code in ``segments``.
        self.codes: list[dict[str, int]] = [{} for _ in range(fields)]

    def __len__(self) -> int:
        return len(self.ts)

    def extend(self, samples: Sequence[tuple[Any, ...]]) -> None:
        """Append window tuples ``(ts, digest, score, decision, label, delay, segments)``."""
        if not samples:
            return
        ts, _, scores, decisions, labels, delays, segs = zip(*samples, strict=True)
        self.ts = np.concatenate((self.ts, np.asarray(ts, dtype=np.int64)))
        self.score = np.concatenate((self.score, np.asarray(scores, dtype=np.float64)))
        self.decision = np.concatenate((self.decision, np.asarray(decisions, dtype=bool)))
        self.label = np.concatenate((self.label, np.asarray(labels, dtype=np.int64)))
        self.delay = np.concatenate((self.delay, np.asarray(delays, dtype=np.float64)))
        columns = []
        for index, codes in enumerate(self.codes):
            column = []
            for names in segs:
                code = codes.get(names[index])
                if code is None:
                    code = codes[names[index]] = len(codes)
                column.append(code)
            columns.append(column)
        added = np.asarray(columns, dtype=np.int32).reshape(len(self.codes), len(samples))
        self.segments = np.concatenate((self.segments, added), axis=1)

    def _drop_first(self, count: int) -> None:
        if count > 0:
            self.ts, self.score = self.ts[count:], self.score[count:]
            self.decision, self.label = self.decision[count:], self.label[count:]
            self.delay, self.segments = self.delay[count:], self.segments[:, count:]

    def keep_last(self, size: int) -> None:
        self._drop_first(len(self.ts) - size)

    def drop_until_after(self, lower: int) -> None:
        self._drop_first(int(np.searchsorted(self.ts, lower, side="right")))

    def columns(
        self, index: int | None = None, value: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Scores, labels, decisions and delays of the window, or of one segment value."""
        if index is None:
            return self.score, self.label, self.decision, self.delay
        code = self.codes[index].get(value) if value is not None else None
        if code is None:
            empty = np.empty(0, dtype=np.float64)
            return empty, np.empty(0, dtype=np.int64), np.empty(0, dtype=bool), empty
        mask = self.segments[index] == code
        return self.score[mask], self.label[mask], self.decision[mask], self.delay[mask]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _millis(value: Any) -> int:
    if isinstance(value, int):
        return value
    if hasattr(value, "timestamp"):  # a datetime from a reader that keeps logical types
        return int(value.timestamp() * 1000)
    raise StreamMLError(f"not a timestamp: {value!r}")


class PerformanceProcessor(Processor):
    """Joins labels to predictions and emits PerformanceReport and SloAlert records."""

    stores = (JOIN_STORE, METRICS_STORE, META_STORE)

    def __init__(
        self,
        settings: PerformanceSettings,
        *,
        prediction_topics: Iterable[str],
        label_topics: Iterable[str],
        optional_topics: Iterable[str] = (),
        report_topic: str,
        alert_topic: str,
        clock: Callable[[], float] = time.time,
        on_report: Callable[[Mapping[str, Any]], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        on_watermark: Callable[[int, str, int], None] | None = None,
        estimator: Estimator | None = None,
    ) -> None:
        self.settings = settings
        self._estimator = estimator  # CBPE estimates beside the realized metrics (or None)
        self._prediction_topics = frozenset(prediction_topics)
        self._label_topics = frozenset(label_topics)
        # Each input topic is a stream with its own watermark. An optional topic (the shadow
        # predictions, empty when no shadow model runs) holds the watermark back only once
        # it has delivered a record on that partition.
        self._topics = sorted(self._prediction_topics | self._label_topics)
        self._stream = {topic: i for i, topic in enumerate(self._topics)}
        optional = frozenset(optional_topics)
        self._required = [topic not in optional for topic in self._topics]
        self._w = struct.Struct(_W.format + "q" * len(self._topics))
        self._report_topic = report_topic
        self._alert_topic = alert_topic
        self._clock = clock
        self._on_report = on_report
        self._on_event = on_event
        self._on_watermark = on_watermark
        self._horizon = int(settings.label_horizon.total_seconds() * 1000)
        self._grace = int(settings.early_label_grace.total_seconds() * 1000)
        self._memory = int(settings.late_label_memory.total_seconds() * 1000)
        self._lateness = int(settings.allowed_lateness.total_seconds() * 1000)
        self._interval = int(settings.report_interval.total_seconds() * 1000)
        self._window_ms = int(settings.window_duration.total_seconds() * 1000)
        self._count_window = settings.window_kind == "count"
        self._fields = list(settings.segment_fields)
        # Values tracked per field and partition (first seen); the reported ones are chosen
        # among them at each boundary, deterministically (see _shown_segments).
        self._track_values = max(4 * settings.segment_max_values, 50)
        self._prediction = struct.Struct("<HdB" + "H" * len(self._fields))
        # A new entry with one prediction: head + prediction ('<' formats have no padding).
        self._first_prediction = struct.Struct(_HEAD.format + self._prediction.format[1:])
        self._sample = struct.Struct("<qdBbq" + "H" * len(self._fields))
        self._correction = struct.Struct("<qbbdB" + "H" * len(self._fields))
        self._monitor = SloMonitor(
            slo_min=settings.slo_min,
            slo_max=settings.slo_max,
            consecutive=settings.slo_consecutive_windows,
            min_labeled=settings.slo_min_labeled,
            canary_metrics=settings.canary_metrics,
            canary_margin=settings.canary_margin,
            estimate_min=None if estimator is None else settings.estimate_slo_min,
        )
        self._group_cache: dict[tuple[int, tuple[int, ...]], list[Group]] = {}
        # Where dead letters found while processing go (the open batch's outputs), and the
        # sliding windows' starts at the last boundary (what interval counters to keep).
        self._orphans: list[Output] = []
        # Sliding-window results per model route, reused while its window content is the
        # same (count windows: nothing released or corrected since); in memory only.
        self._sliding_cache: dict[
            tuple[str, str, str],
            tuple[tuple[Any, ...], int, dict[tuple[str | None, str | None], dict[str, Any]]],
        ] = {}
        self._dirty_models: set[tuple[Any, ...]] = set()
        # The sliding window itself per model route, as of its last report: the samples in
        # (time, digest) order and, per segment field, each value's samples in that order.
        # Samples released at a boundary are all later than every sample in the window
        # (their times are past the previous boundary), so the window moves by appending
        # them and dropping from the front; rebuilt from the views when a correction
        # changed a label in it, the reported segment values changed, or state reloaded.
        self._window_cache: dict[tuple[str, str, str], tuple[tuple[Any, ...], _Window]] = {}
        self._fresh: dict[tuple[str, str, str], list[tuple[PartitionView, bytes, Sample]]] = {}
        self._relabelled: set[tuple[Any, ...]] = set()
        self._window_starts: list[int] = []
        self._state: State | None = None
        # The bound state's stores (set by _bind; these placeholders are never written).
        self._join = self._metrics = self._meta = KeyValueStore("unbound")
        self._views: dict[int, PartitionView] = {}
        self._owned: set[int] = set()

    @classmethod
    def from_settings(
        cls,
        settings: PerformanceSettings,
        *,
        clock: Callable[[], float] = time.time,
        on_report: Callable[[Mapping[str, Any]], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        on_watermark: Callable[[int, str, int], None] | None = None,
    ) -> PerformanceProcessor:
        """The processor with the physical topic names the settings give."""
        kafka = settings.kafka
        shadow = [kafka.topic(settings.shadow_topic)] if settings.shadow_topic else []
        return cls(
            settings,
            prediction_topics=[kafka.topic(settings.predictions_topic), *shadow],
            label_topics=[kafka.topic(settings.labels_topic)],
            optional_topics=[] if settings.shadow_required else shadow,
            report_topic=kafka.topic(settings.report_topic),
            alert_topic=kafka.topic(settings.alerts_topic),
            clock=clock,
            on_report=on_report,
            on_event=on_event,
            on_watermark=on_watermark,
            estimator=estimator_from_settings(settings),
        )

    def input_schemas(self) -> dict[str, str]:
        """Physical input topic -> reader schema, for the runtime."""
        inputs = dict.fromkeys(self._prediction_topics, "Prediction")
        inputs.update(dict.fromkeys(self._label_topics, "Label"))
        return inputs

    # -- the runtime's hooks --------------------------------------------------------

    def on_assigned(self, partitions: Sequence[tuple[str, int]], state: State) -> None:
        self._bind(state)
        for _, number in partitions:
            self._owned.add(number)
            self._views.pop(number, None)  # restored from the changelog: rebuild on first use
        self._forget_windows()

    def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        for _, number in partitions:
            self._owned.discard(number)
            self._views.pop(number, None)
        self._forget_windows()

    def process(self, records: Sequence[Record], state: State) -> Result:
        self._bind(state)
        result = Result()
        self._orphans = result.outputs
        touched: dict[int, PartitionView] = {}
        for record in records:
            view = touched.get(record.partition)
            if view is None:
                self._owned.add(record.partition)
                view = touched[record.partition] = self._touch(record.partition)
            if record.topic in self._label_topics:
                self._on_label(view, record, result)
            elif record.topic in self._prediction_topics:
                self._on_prediction(view, record, result)
            else:
                raise StreamMLError(f"performance: unexpected input topic {record.topic!r}")
        self._advance(touched, result)
        for view in touched.values():
            self._flush(view)
        return result

    # -- views and their persistence ------------------------------------------------

    def _forget_windows(self) -> None:
        """Drop what is cached about sliding windows (state reloaded or partitions moved)."""
        self._sliding_cache.clear()
        self._window_cache.clear()
        self._fresh.clear()
        self._relabelled.clear()

    def _bind(self, state: State) -> None:
        if state is not self._state:
            self._state = state
            self._join = state.store(JOIN_STORE)
            self._metrics = state.store(METRICS_STORE)
            self._meta = state.store(META_STORE)
            self._views.clear()
            self._forget_windows()

    def _touch(self, partition: int) -> PartitionView:
        """The partition's view, in step with its stores; its sequence number moves on."""
        raw = self._meta.get(partition, _K_W)
        stored_seq = _W.unpack_from(raw)[0] if raw is not None else 0
        view = self._views.get(partition)
        if view is None or view.seq != stored_seq:
            if view is not None:
                log.info("partition %d: state moved back (aborted batch); rebuilding", partition)
            view = self._views[partition] = self._load(partition)
            self._forget_windows()
        view.seq += 1
        return view

    def _load(self, partition: int) -> PartitionView:
        view = PartitionView(partition)
        view.marks = [NO_TIME] * len(self._topics)
        view.segment_ids = [{} for _ in self._fields]
        view.segment_names = [{} for _ in self._fields]
        raw = self._meta.get(partition, _K_W)
        if raw is not None:
            view.seq, view.boundary, view.min_ts, *marks = self._w.unpack(raw)
            view.marks = list(marks)
        models: dict[int, list[Any]] = {}
        for key, value in self._meta.items(partition):
            if key[:1] == _P_MODEL:
                models[_MODEL_ID.unpack(key[1:])[0]] = json.loads(value)
            elif key[:1] == _P_SEG:
                index, value_id = _SEG_ID.unpack(key[1:])
                if index < len(self._fields):
                    view.segment_ids[index][value.decode()] = value_id
                    view.segment_names[index][value_id] = value.decode()
        view.models = [models[i] for i in range(len(models))]
        view.model_ids = {(m[0], m[1], m[2]): i for i, m in enumerate(view.models)}
        for key, value in self._metrics.items(partition):
            prefix = key[:1]
            if prefix == _P_SAMPLE:
                ts, score, decision, label, delay, *segments = self._sample.unpack(value)
                view.samples[key[1:]] = Sample(ts, score, bool(decision), label, delay,
                                               tuple(segments))  # fmt: skip
                if ts > view.boundary:
                    view.unreleased.add(key[1:])
                    self._index_release(view, key[1:], ts)
            elif prefix == _P_CORRECTION:
                ts, old, new, score, decision, *segments = self._correction.unpack(value)
                view.corrections[key[1:]] = Correction(
                    ts, old, new, score, bool(decision), tuple(segments)
                )
            elif prefix == _P_BUCKET:
                k = _BUCKET_KEY.unpack(key[1:9])[0]
                group: Group = _GROUP.unpack(key[9:])
                view.buckets.setdefault(k, {})[group] = list(_BUCKET.unpack(value))
            elif prefix == _P_CUMULATIVE:
                view.cumulative[_GROUP.unpack(key[1:])] = Cumulative.unpack(value)
        released: dict[bytes, list[tuple[int, bytes]]] = {}
        for key, s in view.samples.items():
            if key not in view.unreleased:
                released.setdefault(key[16:], []).append((s.ts, key))
        view.released = {model: deque(sorted(items)) for model, items in released.items()}
        for key, value in self._join.items(partition):
            self._index(view, key, self._deadline(_HEAD.unpack_from(value)))
        return view

    def _flush(self, view: PartitionView) -> None:
        p = view.partition
        for k, group in view.dirty_buckets:
            counts = view.buckets.get(k, {}).get(group)
            key = _P_BUCKET + _BUCKET_KEY.pack(k) + _GROUP.pack(*group)
            if counts is None:
                self._metrics.delete(p, key)
            else:
                self._metrics.put(p, key, _BUCKET.pack(*counts))
        for group in view.dirty_cumulative:
            self._metrics.put(p, _P_CUMULATIVE + _GROUP.pack(*group), view.cumulative[group].pack())
        view.dirty_buckets.clear()
        view.dirty_cumulative.clear()
        if self._estimator is not None:
            self._estimator.flush(view, self._metrics)
        if self._on_watermark is not None:
            for topic, mark in zip(self._topics, view.marks, strict=True):
                if mark != NO_TIME:
                    self._on_watermark(p, topic, mark)
        self._meta.put(
            p,
            _K_W,
            self._w.pack(view.seq, view.boundary, view.min_ts, *view.marks),
        )

    # -- entries of the join store -----------------------------------------------

    def _pack(self, entry: Entry) -> bytes:
        parts = [_HEAD.pack(entry.kind, entry.time, len(entry.labels), len(entry.predictions))]
        for model_id, score, decision, segments in entry.predictions:
            parts.append(self._prediction.pack(model_id, score, decision, *segments))
        for label, labeled_at, repeats in entry.labels:
            parts.append(_LABEL.pack(label, labeled_at, min(repeats, 255)))
        if entry.origin is not None:
            o = entry.origin
            strings = [s.encode() for s in (o.event_id, o.entity_id, o.source, o.topic)]
            parts.append(_ORIGIN.pack(o.offset, o.timestamp_ms, o.partition,
                                      *(len(s) for s in strings)))  # fmt: skip
            parts.extend(strings)
        return b"".join(parts)

    def _unpack(self, raw: bytes) -> Entry:
        kind, at, labels, count = _HEAD.unpack_from(raw)
        entry = Entry(kind, at)
        offset = _HEAD.size
        size = self._prediction.size
        for _ in range(count):
            model_id, score, decision, *segments = self._prediction.unpack_from(raw, offset)
            entry.predictions.append((model_id, score, bool(decision), tuple(segments)))
            offset += size
        for _ in range(labels):
            entry.labels.append(_LABEL.unpack_from(raw, offset))
            offset += _LABEL.size
        if offset < len(raw):
            record_offset, ts, partition, *lengths = _ORIGIN.unpack_from(raw, offset)
            offset += _ORIGIN.size
            strings = []
            for length in lengths:
                strings.append(raw[offset : offset + length].decode())
                offset += length
            event_id, entity_id, source, topic = strings
            entry.origin = LabelOrigin(
                event_id, entity_id, source, topic, partition, record_offset, ts
            )
        return entry

    def _deadline(self, head: tuple[int, ...]) -> int:
        kind, at = head[0], head[1]
        if kind == PENDING:
            return at + self._horizon
        if kind == EARLY_LABEL:
            return at + self._grace
        return at

    def _index(self, view: PartitionView, digest: bytes, deadline: int) -> None:
        k = _ceil_div(deadline, self._interval)
        if view.boundary != NO_TIME:
            k = max(k, view.boundary // self._interval + 1)
        bucket = view.expiry.get(k)
        if bucket is None:
            view.expiry[k] = [digest]
        else:
            bucket.append(digest)

    # -- interning ----------------------------------------------------------------

    def _model_id(self, view: PartitionView, value: Mapping[str, Any]) -> int:
        key = (str(value["model_name"]), str(value["model_version"]), str(value["route"]))
        threshold = float(value["threshold"])
        model_id = view.model_ids.get(key)
        if model_id is None:
            model_id = len(view.models)
            if model_id > 0xFFFF:
                raise StreamMLError("performance: more than 65535 model routes in one partition")
            view.models.append([*key, threshold])
            view.model_ids[key] = model_id
        elif view.models[model_id][3] == threshold:
            return model_id
        view.models[model_id][3] = threshold
        self._meta.put(
            view.partition,
            _P_MODEL + _MODEL_ID.pack(model_id),
            json.dumps(view.models[model_id]).encode(),
        )
        return model_id

    def _segments(self, view: PartitionView, value: Mapping[str, Any]) -> tuple[int, ...]:
        if not self._fields:
            return ()
        given = value.get("segments") or {}
        ids = []
        for index, name in enumerate(self._fields):
            seg = given.get(name)
            seg = MISSING_NAME if seg is None else str(seg)
            known = view.segment_ids[index]
            value_id = known.get(seg)
            if value_id is None:
                if seg == OTHER_NAME or len(known) >= self._track_values:
                    value_id = OTHER
                else:
                    value_id = len(known) + 1
                    known[seg] = value_id
                    view.segment_names[index][value_id] = seg
                    self._meta.put(view.partition, _P_SEG + _SEG_ID.pack(index, value_id),
                                   seg.encode())  # fmt: skip
            ids.append(value_id)
        return tuple(ids)

    def _groups(self, model_id: int, segments: tuple[int, ...]) -> list[Group]:
        """The all-traffic group and one group per segment field (shared, immutable)."""
        key = (model_id, segments)
        groups = self._group_cache.get(key)
        if groups is None:
            groups = [(model_id, MODEL_LEVEL, 0)]
            groups += [(model_id, index, value_id) for index, value_id in enumerate(segments)]
            if len(self._group_cache) < 100_000:
                self._group_cache[key] = groups
        return groups

    # -- per-record logic ---------------------------------------------------------

    def _effective(self, view: PartitionView, ts: int) -> int:
        """Event time of a contribution: never at or before a boundary already reported."""
        return ts if view.boundary == NO_TIME else max(ts, view.boundary + 1)

    def _count(
        self, view: PartitionView, ts: int, groups: Iterable[Group], column: int,
        prediction: Prediction | None = None,
    ) -> None:  # fmt: skip
        k = _ceil_div(self._effective(view, ts), self._interval)
        if prediction is not None and self._estimator is not None:  # a counted prediction
            self._estimator.observe(view, self._metrics, k, groups,
                                    model=view.models[prediction[0]], score=prediction[1],
                                    decision=prediction[2])  # fmt: skip
        bucket = view.buckets.get(k)
        if bucket is None:
            bucket = view.buckets[k] = {}
        for group in groups:
            counts = bucket.get(group)
            if counts is None:
                counts = bucket[group] = [0, 0, 0]
            counts[column] += 1
            view.dirty_buckets.add((k, group))

    def _seen(self, view: PartitionView, ts: int) -> None:
        if view.min_ts == NO_TIME or ts < view.min_ts:
            view.min_ts = ts

    def _event(self, kind: str) -> None:
        if self._on_event is not None:
            self._on_event(kind)

    def _note_time(self, view: PartitionView, record: Record, raw: Any) -> int:
        """A record's event time in ms, noted as the partition's oldest and its stream's mark."""
        t = raw if type(raw) is int else _millis(raw)
        if view.min_ts == NO_TIME or t < view.min_ts:
            view.min_ts = t
        marks, stream = view.marks, self._stream[record.topic]
        marks[stream] = max(marks[stream], t)
        return t

    def _on_prediction(self, view: PartitionView, record: Record, result: Result) -> None:
        value = record.value
        t = self._note_time(view, record, value["event_time"])
        score, threshold = value["score"], value["threshold"]
        if not (0.0 <= score <= 1.0 and math.isfinite(threshold)):  # NaN fails both
            result.rejections.append(
                Rejection(record, "validation.score",
                          f"score must be in [0, 1] and threshold finite, got {score!r}, "
                          f"{threshold!r}")
            )  # fmt: skip
            return
        digest = event_digest(str(value["event_id"]))
        model_id = self._model_id(view, value)
        route = view.models[model_id][2]
        segments = self._segments(view, value)
        prediction: Prediction = (model_id, float(value["score"]), bool(value["decision"]),
                                  segments)  # fmt: skip
        groups = self._groups(model_id, segments)
        raw = self._join.get(view.partition, digest)
        entry = None if raw is None else self._unpack(raw)
        if entry is not None and entry.kind == TOMBSTONE:
            self._event("duplicate_prediction")  # seen and expired already
            return
        if entry is None and view.boundary != NO_TIME and t + self._horizon <= view.boundary:
            # Older than the horizon: its label can no longer be joined. Count it as an
            # unlabeled prediction now, and remember it so a label for it is 'late'.
            self._event("late_prediction")
            self._count(view, t, groups, 0, prediction)
            self._count(view, t, groups, 1)
            deadline = t + self._horizon + self._memory
            if deadline > view.boundary:
                self._join.put(view.partition, digest, self._pack(Entry(TOMBSTONE, deadline)))
                self._index(view, digest, deadline)
            return
        if entry is not None and entry.kind == EARLY_LABEL:
            if t > entry.time + self._grace:
                # The label waited its grace period (in event time) and the prediction came
                # after it: the label is an orphan; the prediction waits for another label.
                self._orphan(entry, "the prediction came after early_label_grace")
                entry = None
            else:
                # The same horizon rule as for a label that comes second.
                joined = [(y, a, 0) for y, a, _ in entry.labels if a - t <= self._horizon]
                for y, a, repeats in entry.labels:
                    if a - t > self._horizon:
                        # Each copy, as each would have been rejected had it come second.
                        why = f"labeled {a - t} ms after the event; horizon {self._horizon} ms"
                        for _ in range(1 + repeats):
                            self._dead_label(entry, y, a, "late", why)
                entry = Entry(PENDING, t, labels=joined)
                entry.predictions.append(prediction)
                self._count(view, t, groups, 0, prediction)
                if joined:
                    self._join_sample(view, digest, entry, prediction)
                self._join.put(view.partition, digest, self._pack(entry))
                self._index(view, digest, t + self._horizon)
                return
        if entry is None:
            self._count(view, t, groups, 0, prediction)
            # = _pack(Entry(PENDING, t, predictions=[prediction])), in one struct call
            packed = self._first_prediction.pack(PENDING, t, 0, 1, *prediction[:3], *segments)
            self._join.put(view.partition, digest, packed)
            self._index(view, digest, t + self._horizon)
            return
        # PENDING: another route for the same event, or a duplicate.
        if any(view.models[p[0]][2] == route for p in entry.predictions):
            self._event("duplicate_prediction")
            return
        entry.predictions.append(prediction)
        self._count(view, t, groups, 0, prediction)
        if entry.labels:
            self._join_sample(view, digest, entry, prediction)
        self._join.put(view.partition, digest, self._pack(entry))

    def _join_sample(
        self, view: PartitionView, digest: bytes, entry: Entry, prediction: Prediction
    ) -> None:
        """A prediction met its label: a sample with the first label, then each correction.

        Replaying the label history (instead of taking the latest label) gives every
        contribution the same event time whichever of prediction and labels came first.
        """
        model_id, score, decision, segments = prediction
        first, first_at, _ = entry.labels[0]
        ts = self._effective(view, max(entry.time, first_at))
        sample = Sample(ts, score, decision, first, first_at - entry.time, segments)
        key = digest + _MODEL_ID.pack(model_id)
        view.samples[key] = sample
        view.unreleased.add(key)
        self._index_release(view, key, sample.ts)
        self._put_sample(view, key, sample)
        for seq in range(1, len(entry.labels)):
            self._correct(view, key, seq=seq, old=entry.labels[seq - 1][0],
                          new=entry.labels[seq][:2], sample_ts=sample.ts,
                          prediction=prediction)  # fmt: skip

    def _correct(
        self,
        view: PartitionView,
        key: bytes,
        *,
        seq: int,
        old: int,
        new: tuple[int, int],
        sample_ts: int,
        prediction: Prediction,
    ) -> None:
        model_id, score, decision, segments = prediction
        ts = self._effective(view, max(new[1], sample_ts))
        fix = Correction(ts, old, new[0], score, decision, segments)
        fix_key = key + bytes([seq])
        view.corrections[fix_key] = fix
        self._metrics.put(
            view.partition,
            _P_CORRECTION + fix_key,
            self._correction.pack(ts, old, fix.new, score, decision, *segments),
        )
        self._count(view, ts, self._groups(model_id, segments), 2)

    def _index_release(self, view: PartitionView, key: bytes, ts: int) -> None:
        k = -(-ts // self._interval)
        keys = view.release_index.get(k)
        if keys is None:
            view.release_index[k] = [key]
        else:
            keys.append(key)

    def _put_sample(self, view: PartitionView, key: bytes, s: Sample) -> None:
        self._metrics.put(
            view.partition,
            _P_SAMPLE + key,
            self._sample.pack(s.ts, s.score, s.decision, s.label, s.delay, *s.segments),
        )

    def _on_label(self, view: PartitionView, record: Record, result: Result) -> None:
        value = record.value
        a = self._note_time(view, record, value["labeled_at"])
        label = value["label"]
        if label not in (0, 1):
            result.rejections.append(
                Rejection(record, "validation.label", f"label must be 0 or 1, got {label!r}")
            )
            return
        digest = event_digest(str(value["event_id"]))
        raw = self._join.get(view.partition, digest)
        if raw is None:
            origin = LabelOrigin(str(value["event_id"]), str(value["entity_id"]),
                                 str(value.get("source") or ""), record.topic,
                                 record.partition, record.offset, record.timestamp_ms)  # fmt: skip
            entry = Entry(EARLY_LABEL, a, labels=[(label, a, 0)], origin=origin)
            self._join.put(view.partition, digest, self._pack(entry))
            self._index(view, digest, a + self._grace)
            return
        entry = self._unpack(raw)
        if entry.kind == TOMBSTONE:
            self._late(record, result, "its prediction expired (label_horizon passed)")
            return
        if label == entry.label:
            self._event("duplicate_label")
            if entry.kind == EARLY_LABEL:
                y, at, repeats = entry.labels[-1]
                entry.labels[-1] = (y, at, repeats + 1)
                self._join.put(view.partition, digest, self._pack(entry))
            return
        if entry.kind == PENDING and a - entry.time > self._horizon:
            self._late(record, result, f"labeled {a - entry.time} ms after the event; "
                       f"label_horizon is {self._horizon} ms")  # fmt: skip
            return
        if len(entry.labels) >= MAX_LABELS:
            result.rejections.append(
                Rejection(record, "corrections.limit",
                          f"event already has {MAX_LABELS} labels; this one is not used", "join")
            )  # fmt: skip
            return
        old = entry.label
        entry.labels.append((label, a, 0))
        self._join.put(view.partition, digest, self._pack(entry))
        if entry.kind == EARLY_LABEL or not entry.predictions:
            if old != NO_LABEL:
                self._event("correction")
            return
        if old == NO_LABEL:
            for prediction in entry.predictions:
                self._join_sample(view, digest, entry, prediction)
            return
        self._event("correction")
        first_at = entry.labels[0][1]
        for prediction in entry.predictions:
            key = digest + _MODEL_ID.pack(prediction[0])
            sample_ts = self._effective(view, max(entry.time, first_at))
            sample = view.samples.get(key)
            if sample is not None:
                sample_ts = sample.ts
            self._correct(view, key, seq=len(entry.labels) - 1, old=old, new=(label, a),
                          sample_ts=sample_ts, prediction=prediction)  # fmt: skip

    def _late(self, record: Record, result: Result, why: str) -> None:
        self._event("late_label")
        result.rejections.append(Rejection(record, "late", f"label too late: {why}", "join"))

    def _orphan(self, entry: Entry, why: str) -> None:
        label, labeled_at, _ = entry.labels[-1]
        self._dead_label(entry, label, labeled_at, "orphan",
                         f"no prediction for this event_id: {why}")  # fmt: skip

    def _dead_label(
        self, entry: Entry, label: int, labeled_at: int, reason: str, message: str
    ) -> None:
        """Dead-letter a label that waited in state (its record is from an earlier batch, so
        it is re-encoded from what the state kept, not copied byte for byte)."""
        self._event(f"{reason}_label")
        origin = entry.origin
        assert origin is not None
        value = {
            "event_id": origin.event_id,
            "entity_id": origin.entity_id,
            "label": label,
            "labeled_at": labeled_at,
            "source": origin.source,
        }
        headers = dead_letter_headers(
            [],
            error_class=reason,
            message=f"event_id {origin.event_id}: {message}",
            service="performance",
            stage="join",
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            source_timestamp_ms=origin.timestamp_ms,
            now_ms=int(self._clock() * 1000),
        )
        self._orphans.append(
            Output(topic=dlq_topic(origin.topic), schema="Label", value=value,
                   key=origin.entity_id.encode(), headers=tuple(headers))
        )  # fmt: skip

    # -- event time moves on --------------------------------------------------------

    def _advance(self, touched: dict[int, PartitionView], result: Result) -> None:
        views = [touched.get(p) or self._touch_into(p, touched) for p in sorted(self._owned)]
        marks = [v.watermark(self._required, self._lateness) for v in views]
        if not views or NO_TIME in marks:
            return  # some stream of some partition has not started: no event-time progress
        watermark = min(marks)
        boundaries = [v.boundary for v in views if v.boundary != NO_TIME]
        if boundaries:
            boundary = max(boundaries)
        else:
            first = min(v.min_ts for v in views if v.min_ts != NO_TIME)
            boundary = ((first - 1) // self._interval) * self._interval
        for v in views:
            v.boundary = boundary
        last_k = boundary // self._interval
        # A boundary is passed only once the watermark is strictly beyond it: then every
        # record at or before it has been read on every stream (streams are in time order
        # within allowed_lateness), whatever batches the consumer happened to form.
        to_k = (watermark - 1) // self._interval
        if to_k <= last_k:
            return
        alert_state = self._load_alerts(views)
        for k in range(last_k + 1, to_k + 1):
            end = k * self._interval
            self._fresh.clear()
            for v in views:
                self._expire(v, k, end)
                self._release(v, end)
                v.boundary = end
            self._report(views, end, alert_state, result)
        self._prune(views, to_k * self._interval)
        encoded = json.dumps(alert_state, sort_keys=True).encode()
        for v in views:
            self._meta.put(v.partition, _K_ALERTS, encoded)

    def _touch_into(self, partition: int, touched: dict[int, PartitionView]) -> PartitionView:
        view = touched[partition] = self._touch(partition)
        return view

    def _load_alerts(self, views: Sequence[PartitionView]) -> dict[str, list[Any]]:
        for v in views:
            raw = self._meta.get(v.partition, _K_ALERTS)
            if raw is not None:
                state: dict[str, list[Any]] = json.loads(raw)
                return state
        return {}

    def _expire(self, view: PartitionView, k: int, end: int) -> None:
        digests = view.expiry.pop(k, None)
        if not digests:
            return
        p = view.partition
        for digest in digests:
            raw = self._join.get(p, digest)
            if raw is None:
                continue
            entry = self._unpack(raw)
            deadline = self._deadline((entry.kind, entry.time))
            if deadline > end:
                # A stale index entry (an early label that was joined since): every change
                # of an entry's deadline indexes it again, so its current one is listed.
                continue
            if entry.kind == EARLY_LABEL:
                self._orphan(entry, "no prediction within early_label_grace")
                self._join.delete(p, digest)
                continue
            if entry.kind == PENDING:
                if not entry.labels:
                    for model_id, _, _, segments in entry.predictions:
                        self._count(view, deadline, self._groups(model_id, segments), 1)
                    self._event("expired_unlabeled")
                tomb = deadline + self._memory
                if tomb > end:
                    self._join.put(p, digest, self._pack(Entry(TOMBSTONE, tomb)))
                    self._index(view, digest, tomb)
                    continue
            self._join.delete(p, digest)

    def _cumulative(self, view: PartitionView, group: Group) -> Cumulative:
        cumulative = view.cumulative.get(group)
        if cumulative is None:
            cumulative = view.cumulative[group] = Cumulative()
        view.dirty_cumulative.add(group)
        return cumulative

    def _release(self, view: PartitionView, end: int) -> None:
        """Apply every contribution with event time <= end to the cumulative counters."""
        last_k = end // self._interval
        due_ks = [k for k in view.release_index if k <= last_k]
        candidates: set[bytes] = set()
        for k in due_ks:
            candidates.update(view.release_index.pop(k))
        samples, unreleased = view.samples, view.unreleased
        due_keys = []
        for key in candidates:
            if key in unreleased:
                if samples[key].ts <= end:
                    due_keys.append(key)
                else:  # not expected (a sample's time never changes); keep it indexed
                    self._index_release(view, key, samples[key].ts)
        models: dict[bytes, tuple[int, list[tuple[PartitionView, bytes, Sample]]]] = {}
        by_time: dict[bytes, list[tuple[int, bytes]]] = {}
        by_group: dict[Group, list[SampleTerms]] = {}
        for key in sorted(due_keys):
            unreleased.discard(key)
            s = samples[key]
            model_key = key[16:]
            found = models.get(model_key)
            if found is None:
                model_id = _MODEL_ID.unpack(model_key)[0]
                name, version, route = view.models[model_id][:3]
                model = (name, version, route)
                self._dirty_models.add(model)
                found = models[model_key] = (model_id, self._fresh.setdefault(model, []))
            model_id, fresh = found
            fresh.append((view, key, s))
            by_time.setdefault(model_key, []).append((s.ts, key))
            # Per group the same additions, in the same (key) order, as add_labeled(score,
            # decision, label, 1, delay) + seen(ts) per sample, with the terms computed once.
            terms = sample_terms(s.score, s.decision, s.label, s.delay, s.ts)
            for group in self._groups(model_id, s.segments):
                group_terms = by_group.get(group)
                if group_terms is None:
                    by_group[group] = [terms]
                else:
                    group_terms.append(terms)
        for group, group_terms in by_group.items():
            self._cumulative(view, group).add_samples(group_terms)
        for model_key, items in by_time.items():
            # Later than every sample released before (their times are past the last boundary).
            items.sort()
            queue = view.released.get(model_key)
            if queue is None:
                view.released[model_key] = deque(items)
            else:
                queue.extend(items)
        due = sorted((c.ts, k) for k, c in view.corrections.items() if c.ts <= end)
        for _, fix_key in due:
            fix = view.corrections.pop(fix_key)
            self._metrics.delete(view.partition, _P_CORRECTION + fix_key)
            key = fix_key[:18]
            model_id = _MODEL_ID.unpack(key[16:])[0]
            self._dirty_models.add(tuple(view.models[model_id][:3]))
            self._relabelled.add(tuple(view.models[model_id][:3]))
            sample = view.samples.get(key)
            # A correction is never earlier than its sample, so the sample is counted already;
            # when it has left the window, ``old`` is what cumulative holds for it.
            counted = fix.old
            if sample is not None:
                counted = sample.label
                sample.label = fix.new
                self._put_sample(view, key, sample)
            if counted != fix.new:
                for group in self._groups(model_id, fix.segments):
                    c = self._cumulative(view, group)
                    c.add_labeled(fix.score, fix.decision, counted, -1)
                    c.add_labeled(fix.score, fix.decision, fix.new, 1)
        bucket = view.buckets.get(end // self._interval)
        if bucket:
            for group, (predictions, expired, corrections) in sorted(bucket.items()):
                c = self._cumulative(view, group)
                c.predictions += predictions
                c.expired += expired
                c.corrections += corrections
                c.seen(end - self._interval + 1)

    # -- reports ----------------------------------------------------------------------

    def _report(
        self,
        views: Sequence[PartitionView],
        end: int,
        alert_state: dict[str, list[Any]],
        result: Result,
    ) -> None:
        names: dict[tuple[str, str, str], float] = {}  # model -> threshold
        window: dict[tuple[str, str, str], list[tuple[Any, ...]]] = {}
        cumulative: dict[tuple[str, str, str, str | None, str | None], Cumulative] = {}
        segment_values: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
        lower = end - self._window_ms
        # Per partition cumulative counters, by names (ids differ between partitions and
        # runs), merged in name order so float sums come out bit-identical every time.
        counters: list[tuple[tuple[str, str, str, int, str], int, Cumulative]] = []
        popularity: dict[tuple[int, str], int] = {}
        for v in views:
            for model_id, index, value_id in v.cumulative:
                c = v.cumulative[(model_id, index, value_id)]
                name, version, route = v.models[model_id][:3]
                seg = "" if index == MODEL_LEVEL else v.segment_name(index, value_id)
                counters.append(((name, version, route, index, seg), v.partition, c))
                if index != MODEL_LEVEL:
                    popularity[(index, seg)] = popularity.get((index, seg), 0) + c.predictions
        shown, shown_signature = self._shown_segments(popularity)
        for (name, version, route, index, seg), _, c in sorted(counters, key=lambda x: x[:2]):
            if index == MODEL_LEVEL:
                seg_field, seg_value = None, None
            else:
                seg_field, seg_value = self._fields[index], shown(index, seg)
                segment_values.setdefault((name, version, route), set()).add((seg_field, seg_value))
            total = cumulative.get((name, version, route, seg_field, seg_value))
            if total is None:
                total = cumulative[(name, version, route, seg_field, seg_value)] = Cumulative()
            total.merge(c)
        for v in views:
            for name, version, route, threshold in v.models:
                names.setdefault((name, version, route), threshold)
        # Count windows change only when samples are released or corrected: reuse the last
        # results of a model route whose window did not move (most boundaries of a quiet
        # model, every boundary of a catch-up past the end of the data).
        stale = {
            model
            for model in names
            if not self._count_window
            or model in self._dirty_models
            or model not in self._sliding_cache
            or self._sliding_cache[model][0] != shown_signature
        }
        self._dirty_models.clear()
        cache = self._window_cache
        rebuild = {
            model
            for model in stale
            if model in self._relabelled or model not in cache or cache[model][0] != shown_signature
        }
        self._relabelled.clear()
        fresh, self._fresh = self._fresh, {}
        if rebuild:
            count_window = self._count_window
            for v in views:
                # model key (id bytes, per partition) -> the window list it fills, or None
                targets: dict[bytes, list[tuple[Any, ...]] | None] = {}
                seg_names: dict[tuple[int, ...], tuple[str, ...]] = {}
                for key, s in v.samples.items():
                    ts = s.ts
                    if ts > end or (not count_window and ts <= lower):
                        continue
                    model_key = key[16:]
                    if model_key in targets:
                        target = targets[model_key]
                    else:
                        name, version, route = v.models[_MODEL_ID.unpack(model_key)[0]][:3]
                        wanted = (name, version, route)
                        target = targets[model_key] = (
                            window.setdefault(wanted, []) if wanted in rebuild else None
                        )
                    if target is None:
                        continue
                    segs = seg_names.get(s.segments)
                    if segs is None:
                        segs = seg_names[s.segments] = tuple(
                            shown(i, v.segment_name(i, vid)) for i, vid in enumerate(s.segments)
                        )
                    target.append((ts, key[:16], s.score, s.decision, s.label, s.delay, segs))
        model_reports: list[dict[str, Any]] = []
        self._window_starts = []
        estimates = None if self._estimator is None else self._estimator.at_boundary(
            views, self._metrics, end, lambda v, g: (*v.models[g[0]][:3], *(
                (None, None) if g[1] == MODEL_LEVEL
                else (self._fields[g[1]], shown(g[1], v.segment_name(g[1], g[2])))))
        )  # fmt: skip
        for model in sorted(names):
            groups: list[tuple[str | None, str | None]] = [(None, None)]
            groups += sorted(segment_values.get(model, set()))
            if model in stale:
                if model in rebuild:
                    samples = _Window(len(self._fields))
                    cache[model] = (shown_signature, samples)
                    arrived = sorted(window.get(model, []), key=_BY_TIME)
                    if self._count_window:
                        arrived = arrived[-self.settings.window_size :]
                else:
                    samples = cache[model][1]
                    arrived = self._window_samples(fresh.get(model, ()), shown)
                    arrived.sort(key=_BY_TIME)
                samples.extend(arrived)
                if self._count_window:
                    samples.keep_last(self.settings.window_size)
                    start = int(samples.ts[0]) if len(samples) else end
                else:
                    samples.drop_until_after(lower)
                    start = lower
                parts: dict[tuple[str | None, str | None], dict[str, Any]] = {}
                for seg_field, seg_value in groups:
                    field_index = None if seg_field is None else self._fields.index(seg_field)
                    parts[(seg_field, seg_value)] = self._window_part(
                        *samples.columns(field_index, seg_value)
                    )
                if self._count_window:
                    self._sliding_cache[model] = (shown_signature, start, parts)
            else:
                _, start, parts = self._sliding_cache[model]
                if parts[(None, None)]["labeled"] == 0:
                    start = end  # an empty window starts where it ends
            self._window_starts.append(start)
            counts = self._window_counts(views, model, start, end, shown)
            threshold = names[model]
            for seg_field, seg_value in groups:
                part = parts.get((seg_field, seg_value))
                if part is None:  # a segment value first counted now: none in this window
                    part = self._window_part(*_Window(0).columns())
                sliding = self._sliding(
                    model, seg_field=seg_field, seg_value=seg_value, part=part,
                    start=start, end=end, counts=counts.get((seg_field, seg_value), (0, 0, 0)),
                    threshold=threshold,
                )  # fmt: skip
                total = cumulative.get((*model, seg_field, seg_value)) or Cumulative()
                overall = self._overall(
                    model, seg_field=seg_field, seg_value=seg_value, total=total, end=end,
                    threshold=threshold,
                )  # fmt: skip
                if estimates is not None:
                    window_estimate, overall_estimate = estimates((*model, seg_field, seg_value))
                    sliding.update(window_estimate)
                    overall.update(overall_estimate)
                for report in (sliding, overall):
                    result.outputs.append(
                        Output(topic=self._report_topic, schema="PerformanceReport",
                               value=report, key="/".join(model).encode())
                    )  # fmt: skip
                    if self._on_report is not None:
                        self._on_report(report)
                if seg_field is None:
                    model_reports.append(sliding)
        for alert in self._monitor.evaluate(model_reports, alert_state):
            result.outputs.append(
                Output(topic=self._alert_topic, schema="SloAlert", value=alert,
                       key=alert["alert_id"].encode())
            )  # fmt: skip

    @staticmethod
    def _window_samples(
        fresh: Iterable[tuple[PartitionView, bytes, Sample]], shown: Callable[[int, str], str]
    ) -> list[tuple[Any, ...]]:
        """Window tuples of samples released at this boundary (as the full build makes)."""
        seg_names: dict[tuple[int, tuple[int, ...]], tuple[str, ...]] = {}
        out = []
        for v, key, s in fresh:
            segs = seg_names.get((v.partition, s.segments))
            if segs is None:
                segs = seg_names[(v.partition, s.segments)] = tuple(
                    shown(i, v.segment_name(i, vid)) for i, vid in enumerate(s.segments)
                )
            out.append((s.ts, key[:16], s.score, s.decision, s.label, s.delay, segs))
        return out

    def _shown_segments(
        self, popularity: Mapping[tuple[int, str], int]
    ) -> tuple[Callable[[int, str], str], tuple[Any, ...]]:
        """Which segment values are reported by name: per field the ``segment_max_values``
        with the most predictions so far (ties by name); the rest are reported as 'other'.
        Decided from committed counters at each boundary, so it is the same in every run."""
        cap = self.settings.segment_max_values
        ranked: dict[int, list[tuple[int, str]]] = {}
        for (index, seg), count in popularity.items():
            if seg != OTHER_NAME:
                ranked.setdefault(index, []).append((-count, seg))
        keep = {index: {seg for _, seg in sorted(items)[:cap]} for index, items in ranked.items()}

        def shown(index: int, seg: str) -> str:
            return seg if seg in keep.get(index, ()) else OTHER_NAME

        return shown, tuple(sorted((index, tuple(sorted(k))) for index, k in keep.items()))

    def _window_counts(
        self,
        views: Sequence[PartitionView],
        model: tuple[str, str, str],
        start: int,
        end: int,
        shown: Callable[[int, str], str],
    ) -> dict[tuple[str | None, str | None], tuple[int, int, int]]:
        """Predictions, expired and corrections per segment in the intervals of the window."""
        first_k = _ceil_div(start, self._interval) if self._count_window else (
            start // self._interval + 1)  # fmt: skip
        if self._count_window:
            first_k = min(first_k, end // self._interval)
        totals: dict[tuple[str | None, str | None], list[int]] = {}
        for v in views:
            model_id = v.model_ids.get(model)
            if model_id is None:
                continue
            for k in range(first_k, end // self._interval + 1):
                bucket = v.buckets.get(k)
                if not bucket:
                    continue
                for (group_model, index, value_id), counts in bucket.items():
                    if group_model != model_id:
                        continue
                    name: tuple[str | None, str | None] = (
                        (None, None) if index == MODEL_LEVEL
                        else (self._fields[index], shown(index, v.segment_name(index, value_id)))
                    )  # fmt: skip
                    total = totals.setdefault(name, [0, 0, 0])
                    for column in range(3):
                        total[column] += counts[column]
        return {name: (t[0], t[1], t[2]) for name, t in totals.items()}

    @staticmethod
    def _base(
        model: tuple[str, str, str],
        *,
        seg_field: str | None,
        seg_value: str | None,
        window: str,
        start: int,
        end: int,
        threshold: float,
    ) -> dict[str, Any]:
        return {
            "model_name": model[0],
            "model_version": model[1],
            "route": model[2],
            "segment_field": seg_field,
            "segment_value": seg_value,
            "window": window,
            "window_start": start,
            "window_end": end,
            "threshold": threshold,
        }

    @staticmethod
    def _window_part(
        scores: np.ndarray, labels: np.ndarray, decisions: np.ndarray, delays: np.ndarray
    ) -> dict[str, Any]:
        """The sample-based fields of a sliding report (exact, from the joined samples)."""
        part: dict[str, Any] = window_metrics(scores, labels, decisions)
        ordered = np.sort(delays)
        part.update(
            labeled=len(scores),
            label_delay_p50_ms=sorted_percentile(ordered, 50),
            label_delay_p90_ms=sorted_percentile(ordered, 90),
        )
        return part

    def _sliding(
        self,
        model: tuple[str, str, str],
        *,
        seg_field: str | None,
        seg_value: str | None,
        part: Mapping[str, Any],
        start: int,
        end: int,
        counts: tuple[int, int, int],
        threshold: float,
    ) -> dict[str, Any]:
        report = self._base(
            model,
            seg_field=seg_field,
            seg_value=seg_value,
            window="sliding",
            start=start,
            end=end,
            threshold=threshold,
        )
        report.update(part)
        labeled = part["labeled"]
        predictions, expired, corrections = counts
        report.update(
            predictions=predictions,
            label_coverage=labeled / (labeled + expired) if labeled + expired else 0.0,
            corrections=corrections,
        )
        return report

    def _overall(
        self,
        model: tuple[str, str, str],
        *,
        seg_field: str | None,
        seg_value: str | None,
        total: Cumulative,
        end: int,
        threshold: float,
    ) -> dict[str, Any]:
        start = total.first_ts if total.first_ts != NO_TIME else end
        report = self._base(
            model,
            seg_field=seg_field,
            seg_value=seg_value,
            window="cumulative",
            start=start,
            end=end,
            threshold=threshold,
        )
        report.update(total.metrics())
        labeled = total.labeled
        report.update(
            predictions=total.predictions,
            labeled=labeled,
            label_coverage=labeled / (labeled + total.expired) if labeled + total.expired else 0.0,
            corrections=total.corrections,
        )
        return report

    def _prune(self, views: Sequence[PartitionView], end: int) -> None:
        """Forget samples and interval counters no window can reach any more."""
        if self._count_window:
            cutoff = min(self._window_starts, default=end)
        else:
            cutoff = end - self._window_ms
        size = self.settings.window_size
        for v in views:
            p = v.partition
            # The oldest released samples of each model route, beyond the window's size
            # (count) or at or before its start (time).
            doomed = []
            for queue in v.released.values():
                if self._count_window:
                    while len(queue) > size:
                        doomed.append(queue.popleft()[1])
                else:
                    while queue and queue[0][0] <= cutoff:
                        doomed.append(queue.popleft()[1])
            for key in doomed:
                del v.samples[key]
                self._metrics.delete(p, _P_SAMPLE + key)
            last_k = cutoff // self._interval
            for k in [k for k in v.buckets if k < last_k]:
                for group in v.buckets.pop(k):
                    v.dirty_buckets.add((k, group))
