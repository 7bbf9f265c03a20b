"""Byte layouts of the performance service's three state stores, and what they decode to.

Every store value is bytes with an explicit little-endian ``struct`` layout (no padding), so
the changelog is compact and a restore rebuilds exactly what was written.

``join`` (key: the 16-byte :func:`event_digest` of an event_id) holds one entry per event:
an :data:`ENTRY_HEAD` (kind, time, label count, prediction count), then the predictions,
then the labels (:data:`LABEL_ITEM`), then, for a label waiting for its prediction, a
:data:`LABEL_ORIGIN` and its four strings, then its record as read (:data:`LABEL_RECORD`:
key, value and headers, for its dead letter; absent in entries written before it was kept).

``metrics`` holds, by one-byte prefix: joined samples of the sliding windows (``S`` + sample
key), corrections waiting for the watermark (``C`` + sample key + sequence byte), per
interval counters (``B`` + interval + group) and cumulative counters (``U`` + group).

``meta`` holds the partition's progress (``W``: sequence, boundary, oldest time and one
watermark per input topic), whether it has sent a partial (``P``), the model routes
(``M`` + id), the segment values (``V`` + field index + id) and, from before the merge
stage, the alert state (``A``; the merge stage keeps its own).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

JOIN_STORE = "join"
METRICS_STORE = "metrics"
META_STORE = "meta"

# Kinds of a join entry.
PENDING = 1  # one or more predictions, with or without their label
TOMBSTONE = 2  # an expired event, remembered to tell a late label from an orphan
EARLY_LABEL = 3  # a label waiting for its prediction

NO_LABEL = -1
MAX_LABELS = 16  # first label + corrections kept per event
MODEL_LEVEL = 255  # segment field index of the all-traffic group
OTHER = 0  # segment value id of "other" (values past the cap)
OTHER_NAME = "other"
MISSING_NAME = "unknown"

# Columns of the per-interval counters.
PREDICTED = 0
EXPIRED = 1
CORRECTED = 2

ENTRY_HEAD = struct.Struct("<BqBB")  # kind, time, labels in the history, predictions
LABEL_ITEM = struct.Struct("<bqB")  # label, labeled_at, identical repeats while waiting
LABEL_ORIGIN = struct.Struct("<qqiHHHH")  # offset, timestamp, partition, 4 string lengths
LABEL_RECORD = struct.Struct("<iiH")  # key length, value length (-1: none), header count
HEADER_LENGTHS = struct.Struct("<HI")  # name length, value length
PROGRESS_HEAD = struct.Struct("<qqq")  # seq, boundary, min ts; one watermark per input topic
GROUP = struct.Struct("<HBH")  # model id, segment field index, segment value id
INTERVAL = struct.Struct("<q")  # an interval number: ceil(event time / report_interval)
INTERVAL_COUNTS = struct.Struct("<qqq")  # predictions, expired, corrections
MODEL_ID = struct.Struct("<H")
SEGMENT_ID = struct.Struct("<BH")  # field index, value id

# meta keys and key prefixes
PROGRESS_KEY = b"W"
PARTIALS_KEY = b"P"  # present once the partition sent a partial (the merge stage has it all)
ALERTS_KEY = b"A"
MODEL_PREFIX = b"M"
SEGMENT_PREFIX = b"V"
# metrics key prefixes
SAMPLE_PREFIX = b"S"
CORRECTION_PREFIX = b"C"
INTERVAL_COUNTS_PREFIX = b"B"
CUMULATIVE_PREFIX = b"U"
# + interval (q) + group: the estimator's score sums of the predictions counted in it
ESTIMATE_INTERVAL_PREFIX = b"E"
# + group: the estimator's score sums of the predictions of every reported interval
ESTIMATE_TOTAL_PREFIX = b"T"

DIGEST_SIZE = 16
# A sample key is the event's digest + the model route's id; a correction key adds a
# sequence byte (which label of the event's history it applies).
SAMPLE_DIGEST = slice(0, DIGEST_SIZE)
SAMPLE_MODEL = slice(DIGEST_SIZE, DIGEST_SIZE + MODEL_ID.size)
CORRECTION_SAMPLE = slice(0, DIGEST_SIZE + MODEL_ID.size)
# An interval-counters key (after its prefix) is the interval + the group.
COUNTS_INTERVAL = slice(0, INTERVAL.size)
COUNTS_GROUP = slice(INTERVAL.size, None)

Group = tuple[int, int, int]  # model id, segment field index (MODEL_LEVEL: all), value id
Prediction = tuple[int, float, bool, tuple[int, ...]]  # model id, score, decision, segment ids
ModelRoute = tuple[str, str, str]  # model name, version, route

_DIGEST = hashlib.blake2b(digest_size=DIGEST_SIZE)


def event_digest(event_id: str) -> bytes:
    """The 16-byte key of an event_id in the join store (BLAKE2b-128 of its UTF-8 bytes;
    a copy of a prepared hasher gives the same bytes as building one, in half the time)."""
    hasher = _DIGEST.copy()
    hasher.update(event_id.encode())
    return hasher.digest()


def sample_key(digest: bytes, model_id: int) -> bytes:
    """The key of the sample an event's prediction by one model route made."""
    return digest + MODEL_ID.pack(model_id)


def model_id_of(key: bytes) -> int:
    """The model route id of a sample (or correction) key."""
    model_id: int = MODEL_ID.unpack(key[SAMPLE_MODEL])[0]
    return model_id


def interval_counts_key(interval: int, group: Group) -> bytes:
    return INTERVAL_COUNTS_PREFIX + INTERVAL.pack(interval) + GROUP.pack(*group)


def cumulative_key(group: Group) -> bytes:
    return CUMULATIVE_PREFIX + GROUP.pack(*group)


def model_key(model_id: int) -> bytes:
    return MODEL_PREFIX + MODEL_ID.pack(model_id)


def segment_key(field_index: int, value_id: int) -> bytes:
    return SEGMENT_PREFIX + SEGMENT_ID.pack(field_index, value_id)


def encode_model(model: list[Any]) -> bytes:
    """A model route's ``[name, version, route, threshold]`` as stored in ``meta``."""
    return json.dumps(model).encode()


@dataclass(slots=True)
class LabelOrigin:
    """What a waiting label needs to be dead-lettered later (its record is long gone): where
    it was read, its key, value bytes and headers (a :class:`~streamml.deadletter.
    DeadLetterSource`), and the fields to re-encode another label of the same event."""

    event_id: str
    entity_id: str
    source: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None = None
    value: bytes | None = None  # as read; None when unknown (re-encoded from the fields)
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class Entry:
    """One event of the join store."""

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


def _pack_label_record(origin: LabelOrigin) -> list[bytes]:
    key, value = origin.key, origin.value
    parts = [LABEL_RECORD.pack(-1 if key is None else len(key), -1 if value is None else len(value),
                               len(origin.headers))]  # fmt: skip
    parts += [key or b"", value or b""]
    for name, header in origin.headers:
        encoded = name.encode()
        parts += [HEADER_LENGTHS.pack(len(encoded), len(header)), encoded, header]
    return parts


def _unpack_label_record(raw: bytes, offset: int, origin: LabelOrigin) -> None:
    key_size, value_size, count = LABEL_RECORD.unpack_from(raw, offset)
    offset += LABEL_RECORD.size
    if key_size >= 0:
        origin.key = raw[offset : offset + key_size]
        offset += key_size
    if value_size >= 0:
        origin.value = raw[offset : offset + value_size]
        offset += value_size
    headers = []
    for _ in range(count):
        name_size, header_size = HEADER_LENGTHS.unpack_from(raw, offset)
        offset += HEADER_LENGTHS.size
        name = raw[offset : offset + name_size].decode()
        offset += name_size
        headers.append((name, raw[offset : offset + header_size]))
        offset += header_size
    origin.headers = tuple(headers)


class StateLayout:
    """The layouts that depend on the configuration: how many segment fields a prediction,
    sample and correction carry, and how many input topics the progress record has."""

    def __init__(self, *, segment_fields: int, input_topics: int) -> None:
        segments = "H" * segment_fields
        self.progress = struct.Struct(PROGRESS_HEAD.format + "q" * input_topics)
        self.prediction = struct.Struct("<HdB" + segments)
        # A new entry with one prediction: head + prediction ('<' formats have no padding).
        self.first_prediction = struct.Struct(ENTRY_HEAD.format + self.prediction.format[1:])
        self.sample = struct.Struct("<qdBbq" + segments)
        self.correction = struct.Struct("<qbbdB" + segments)

    # -- join entries -----------------------------------------------------------------

    def pack_entry(self, entry: Entry) -> bytes:
        parts = [ENTRY_HEAD.pack(entry.kind, entry.time, len(entry.labels), len(entry.predictions))]
        for model_id, score, decision, segments in entry.predictions:
            parts.append(self.prediction.pack(model_id, score, decision, *segments))
        for label, labeled_at, repeats in entry.labels:
            parts.append(LABEL_ITEM.pack(label, labeled_at, min(repeats, 255)))
        if entry.origin is not None:
            o = entry.origin
            strings = [s.encode() for s in (o.event_id, o.entity_id, o.source, o.topic)]
            parts.append(LABEL_ORIGIN.pack(o.offset, o.timestamp_ms, o.partition,
                                           *(len(s) for s in strings)))  # fmt: skip
            parts.extend(strings)
            parts.extend(_pack_label_record(o))
        return b"".join(parts)

    def pack_first_prediction(self, time: int, prediction: Prediction) -> bytes:
        """= ``pack_entry(Entry(PENDING, time, predictions=[prediction]))``, in one call."""
        return self.first_prediction.pack(PENDING, time, 0, 1, *prediction[:3], *prediction[3])

    def unpack_entry(self, raw: bytes) -> Entry:
        kind, at, labels, count = ENTRY_HEAD.unpack_from(raw)
        entry = Entry(kind, at)
        offset = ENTRY_HEAD.size
        size = self.prediction.size
        for _ in range(count):
            model_id, score, decision, *segments = self.prediction.unpack_from(raw, offset)
            entry.predictions.append((model_id, score, bool(decision), tuple(segments)))
            offset += size
        for _ in range(labels):
            entry.labels.append(LABEL_ITEM.unpack_from(raw, offset))
            offset += LABEL_ITEM.size
        if offset < len(raw):
            record_offset, ts, partition, *lengths = LABEL_ORIGIN.unpack_from(raw, offset)
            offset += LABEL_ORIGIN.size
            strings = []
            for length in lengths:
                strings.append(raw[offset : offset + length].decode())
                offset += length
            event_id, entity_id, source, topic = strings
            origin = LabelOrigin(event_id, entity_id, source, topic, partition, record_offset, ts)
            if offset < len(raw):
                _unpack_label_record(raw, offset, origin)
            else:  # an entry from before the record was kept: its key was the entity_id
                origin.key = entity_id.encode()
            entry.origin = origin
        return entry

    # -- samples and corrections (metrics store) ---------------------------------------

    def pack_sample(self, s: Sample) -> bytes:
        return self.sample.pack(s.ts, s.score, s.decision, s.label, s.delay, *s.segments)

    def unpack_sample(self, raw: bytes) -> Sample:
        ts, score, decision, label, delay, *segments = self.sample.unpack(raw)
        return Sample(ts, score, bool(decision), label, delay, tuple(segments))

    def pack_correction(self, c: Correction) -> bytes:
        return self.correction.pack(c.ts, c.old, c.new, c.score, c.decision, *c.segments)

    def unpack_correction(self, raw: bytes) -> Correction:
        ts, old, new, score, decision, *segments = self.correction.unpack(raw)
        return Correction(ts, old, new, score, bool(decision), tuple(segments))
