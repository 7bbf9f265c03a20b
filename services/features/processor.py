"""The features service's pure core: events in, one FeatureVector per distinct event out.

For each event, in partition order:

1. **dedup** - an event id already processed in this partition (within the retention
   window) yields nothing and counts as a duplicate, replayed or not;
2. **validate** - the declarative rules, then event-time plausibility against the
   partition's latest event time; a failure is a :class:`Rejection` (dead letter);
3. **late** - an event older than its entity's watermark minus the allowed lateness is
   rejected as ``late`` instead of silently landing in a wrong window;
4. **compute** - stateless transforms plus the entity's window aggregates (from its
   history *before* this event), then the event joins the history;
5. **remember** the event id and advance the partition's event time (expiring old ids).

Every record also feeds the fail-stop circuit; when it trips, the records after the trip
are handed back in a :class:`Halt` and are processed after the circuit closes.

Nothing here touches Kafka or the wall clock, except ``computed_at`` (and freshness
metrics), which come from the injected ``clock``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from services.features.circuit import CircuitState, FailStopCircuit
from services.features.dedup import DedupStore
from services.features.entity_state import NO_TIME, EntityHistory
from services.features.feature_set import (
    Columns,
    FeatureSet,
    Matrix,
    demo_feature_set,
    field_getter,
)
from services.features.metrics import FeaturesMetrics, default_metrics
from services.features.validation import (
    DEFAULT_RULES,
    EventTimeBounds,
    Rule,
    RuleSet,
    Violation,
)
from services.features.vector_writer import FEATURE_VECTOR_SCHEMA, VectorWriter
from streamml.errors import InfrastructureError
from streamml.logs import fields
from streamml.processor import Halt, Output, Processor, Record, Rejection, Result
from streamml.state import KeyValueStore, State

if TYPE_CHECKING:
    from services.features.settings import FeaturesSettings
    from streamml.codec import AvroCodec

log = logging.getLogger(__name__)

ENTITIES_STORE = "entities"
DEDUP_STORE = "dedup"
DEFAULT_DEDUP_RETENTION_MS = 7 * 86_400_000
# Decoded entity histories kept between batches (a few hundred bytes each): decoding the
# stored bytes again is ~1.5 us of the ~30 us an event costs.
DEFAULT_HISTORY_CACHE_SIZE = 20_000


class _Batch:
    """One micro-batch in flight: what was computed up front, and what was accepted."""

    __slots__ = (
        "accepted",
        "aggregates",
        "failing",
        "rows",
        "stateless",
        "stateless_rows",
        "stateless_values",
    )

    def __init__(self) -> None:
        self.failing: set[int] | None = None
        """Indexes of the events that break a rule (None: not known, check each)."""
        self.stateless: Matrix | None = None
        """Stateless features of the rule-abiding events (None: compute per event)."""
        self.rows: dict[int, int] | None = None
        """Event index -> row of ``stateless`` when some events broke a rule."""
        self.accepted: list[tuple[Record, str, str, int]] = []
        """(record, event id, entity id, event time) of each vector to emit, in order."""
        self.stateless_rows: list[int] = []
        self.stateless_values: list[list[float]] = []
        self.aggregates: list[bytes] = []
        """Each accepted event's aggregates, little-endian float64 bytes."""


class FeaturesProcessor(Processor):
    """Validates, deduplicates and turns events into feature vectors."""

    stores = (ENTITIES_STORE, DEDUP_STORE)

    def __init__(
        self,
        *,
        feature_set: FeatureSet,
        output_topic: str,
        rules: Sequence[Rule] = DEFAULT_RULES,
        time_bounds: EventTimeBounds | None = None,
        dedup_field: str = "event_id",
        dedup_retention_ms: int = DEFAULT_DEDUP_RETENTION_MS,
        circuit: FailStopCircuit | None = None,
        max_entity_events: int = 10_000,
        include_names: bool = True,
        history_cache_size: int = DEFAULT_HISTORY_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
        metrics: FeaturesMetrics | None = None,
    ) -> None:
        self.feature_set = feature_set
        self.metrics = metrics or default_metrics()
        self.output_topic = output_topic
        self._rules = RuleSet(rules)
        # Events older than the dedup horizon could be duplicates whose key expired, so
        # the past bound defaults to the retention: they go to the DLQ instead.
        self._bounds = time_bounds or EventTimeBounds(max_past_ms=dedup_retention_ms)
        self.dedup_field = dedup_field
        self._dedup_id = field_getter(dedup_field)
        self._dedup_retention_ms = dedup_retention_ms
        self.circuit = circuit
        self._max_entity_events = max_entity_events
        self._clock = clock
        # A tuple: the codec writes the same tuple object from memory, without a check.
        self._names: tuple[str, ...] = feature_set.names if include_names else ()
        self._lateness = feature_set.allowed_lateness_ms
        self._retention = feature_set.retention_ms
        self._dedup: DedupStore | None = None
        # (partition, entity key) -> (stored bytes, their decoded history), recent first last.
        self._histories: dict[tuple[int, bytes], tuple[bytes, EntityHistory]] = {}
        self._history_cache_size = history_cache_size
        self._dedup_backing: KeyValueStore | None = None
        self._writer: VectorWriter | None = None
        # Set until the writer is bound (bind needs the registry when one is configured).
        self._unbound_codec: AvroCodec | None = None
        self.metrics.circuit_state.set(0)

    @classmethod
    def from_settings(cls, settings: FeaturesSettings) -> FeaturesProcessor:
        """The processor as the service's settings configure it."""
        circuit = None
        if settings.circuit.enabled:
            c = settings.circuit
            circuit = FailStopCircuit(
                window=c.window,
                threshold=c.threshold,
                min_records=c.min_records,
                probe_after_s=c.probe_after_s,
                probe_records=c.probe_records,
            )
        retention_ms = settings.dedup_retention_s * 1000
        return cls(
            feature_set=demo_feature_set(allowed_lateness_ms=settings.allowed_lateness_ms),
            output_topic=settings.kafka.topic(settings.output_topic),
            time_bounds=EventTimeBounds(
                max_future_ms=settings.max_future_s * 1000, max_past_ms=retention_ms
            ),
            dedup_field=settings.dedup_field,
            dedup_retention_ms=retention_ms,
            circuit=circuit,
            max_entity_events=settings.max_entity_events,
            include_names=settings.include_names,
        )

    # -- runtime hooks ----------------------------------------------------------------

    def _dedup_for(self, state: State) -> DedupStore:
        backing = state.store(DEDUP_STORE)
        if self._dedup is None or self._dedup_backing is not backing:
            self._dedup = DedupStore(backing, retention_ms=self._dedup_retention_ms)
            self._dedup_backing = backing
            for partition in backing.partitions():
                self._dedup.rebuild(partition)
        return self._dedup

    def on_codec(self, codec: AvroCodec) -> None:
        self._unbound_codec = codec
        try:
            self._bind_writer()
        except InfrastructureError as exc:
            # The registry is not answering yet: bind at the first batch instead (a batch
            # cannot be encoded without the registry anyway; the runtime retries it).
            log.warning("FeatureVector writer bound later, the registry is not answering",
                        extra=fields(error=exc))  # fmt: skip

    def _bind_writer(self) -> None:
        codec = self._unbound_codec
        if codec is None:
            return
        fs = self.feature_set
        self._writer = VectorWriter.bind(
            codec,
            self.output_topic,
            feature_set=fs.name,
            version=fs.version,
            content_hash=fs.content_hash,
            names=self._names,
        )
        self._unbound_codec = None

    def on_assigned(self, partitions: Sequence[tuple[str, int]], state: State) -> None:
        dedup = self._dedup_for(state)
        for _, partition in partitions:
            dedup.rebuild(partition)
        log.info(
            "partitions assigned",
            extra={"partitions": [p for _, p in partitions], "dedup_keys": dedup.retained()},
        )

    def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        revoked = {partition for _, partition in partitions}
        for key in [k for k in self._histories if k[0] in revoked]:
            del self._histories[key]
        for _, partition in partitions:
            if self._dedup is not None:
                self._dedup.forget(partition)
            self.metrics.last_event.forget(partition)

    def on_resume(self, *, probe: bool) -> None:
        if self.circuit is None:
            return
        self.circuit.resume(probe=probe)
        state = self.circuit.state
        self.metrics.circuit_state.set(int(state))
        resumed = "half-open (probe)" if probe else "closed by operator"
        log.warning("fail-stop circuit resumed", extra=fields(state=resumed))

    def is_ready(self) -> bool:
        return self.circuit is None or self.circuit.state is not CircuitState.OPEN

    # -- the pure core ----------------------------------------------------------------

    def process(self, records: Sequence[Record], state: State) -> Result:
        result = Result()
        if not records:
            return result
        circuit = self.circuit
        if circuit is not None and circuit.state is CircuitState.OPEN:
            result.halt = self._halt(circuit.trip_reason, records)
            return result
        if self._unbound_codec is not None:
            self._bind_writer()  # InfrastructureError: the runtime retries the batch
        entities = state.store(ENTITIES_STORE)
        dedup = self._dedup_for(state)
        now = self._clock()
        # If this raises, the runtime rolls the state back and processes the records again
        # one by one; the circuit must not count them twice.
        before = circuit.snapshot() if circuit is not None else None
        # Largest accepted event time per partition, read once and written once per batch.
        maxima: dict[int, int | None] = {}
        for partition in {record.partition for record in records}:
            self.metrics.last_event.touch(partition, now)
        batch = self._prepare(records)
        try:
            for index, record in enumerate(records):
                violation = self._one(index, record, entities, dedup, maxima, batch, result)
                if circuit is None:
                    continue
                reason = violation.reason if violation is not None else ""
                tripped = circuit.record(invalid=violation is not None, reason=reason)
                if tripped is not None:
                    self.metrics.circuit_trips.inc()
                    log.error(
                        "fail-stop circuit open; holding the rest of this batch",
                        extra=fields(reason=tripped, held_records=len(records) - index - 1),
                    )
                    result.halt = self._halt(tripped, records[index + 1 :])
                    break
        except Exception:
            if circuit is not None and before is not None:
                circuit.restore(before)
            raise
        self._emit(batch, now, result)
        for partition, latest in maxima.items():
            if latest is not None:
                expired = dedup.advance(partition, latest)
                if expired:
                    self.metrics.dedup_expired.inc(expired)
        if circuit is not None:
            self.metrics.invalid_share.set(circuit.invalid_share)
            self.metrics.circuit_state.set(int(circuit.state))
        return result

    def _halt(self, reason: str, unconsumed: Sequence[Record]) -> Halt:
        probe = self.circuit.probe_after_s if self.circuit is not None else None
        return Halt(reason=reason, unconsumed=tuple(unconsumed), probe_after_s=probe)

    def _prepare(self, records: Sequence[Record]) -> _Batch:
        """What can be computed for the whole batch up front, column by column."""
        events = [record.value for record in records]
        columns = Columns(events)  # each field read once, for the rules and the transforms
        batch = _Batch()
        try:
            batch.failing = self._rules.failing(columns)
        except Exception:  # event by event below, which says what is wrong
            return batch
        if batch.failing:
            valid = [i for i in range(len(events)) if i not in batch.failing]
            batch.rows = {i: row for row, i in enumerate(valid)}
            columns = Columns([events[i] for i in valid])
        try:
            batch.stateless = self.feature_set.stateless_matrix(columns)
        except Exception:  # event by event below, as before
            batch.stateless = None
        return batch

    def _one(  # noqa: PLR0917 (the hot path: positional on purpose)
        self,
        index: int,
        record: Record,
        entities: KeyValueStore,
        dedup: DedupStore,
        maxima: dict[int, int | None],
        batch: _Batch,
        result: Result,
    ) -> Violation | None:
        """Handle one record; returns the violation when it was invalid (or late)."""
        event = record.value
        partition = record.partition
        event_id = self._dedup_id(event)
        if not isinstance(event_id, str) or not event_id:
            return self._reject(
                record,
                result,
                Violation(
                    "validation.required",
                    self.dedup_field,
                    f"field {self.dedup_field}={event_id!r}: the dedup key is missing or "
                    "empty (rule required)",
                ),
            )
        digest = dedup.digest(event_id)
        if dedup.seen(partition, digest):
            self.metrics.duplicates.labels("replay" if record.is_replay else "live").inc()
            return None
        failing = batch.failing
        violation = self._rules.check(event) if failing is None or index in failing else None
        if violation is None:
            event_time = int(event["event_time"])
            if partition in maxima:
                partition_max = maxima[partition]
            else:
                partition_max = maxima[partition] = dedup.partition_max(partition)
            violation = self._bounds.check(event_time, partition_max)
        if violation is not None:
            return self._reject(record, result, violation)

        entity_id = str(event["entity_id"])
        entity_key = entity_id.encode("utf-8")
        raw = entities.get(partition, entity_key)
        # The decoded history of the bytes last written for this entity, if those are
        # still the bytes in the store (same object: no rollback or restore since). Taken
        # out while it is changed, so an exception before the write cannot leave a
        # changed history behind for the retry.
        cached = self._histories.pop((partition, entity_key), None)
        if cached is not None and cached[0] is raw:
            history = cached[1]
        else:
            history = EntityHistory() if raw is None else EntityHistory.from_bytes(raw)
        watermark = history.watermark
        if watermark != NO_TIME and event_time < watermark - self._lateness:
            self.metrics.late_events.inc()
            late = Violation(
                "late",
                "event_time",
                f"field event_time={event_time}: {watermark - event_time} ms behind entity "
                f"{entity_id!r}'s watermark {watermark}; allowed lateness is "
                f"{self._lateness} ms (rule late)",
            )
            result.rejections.append(Rejection(record, late.reason, late.message, "validate"))
            return late

        fs = self.feature_set
        value = fs.value_of(event)
        if batch.stateless is not None:
            rows = batch.rows
            batch.stateless_rows.append(index if rows is None else rows[index])
        else:
            batch.stateless_values.append(fs.stateless(event))
        batch.aggregates.append(fs.stateful_bytes(history, event_time, value))

        history.add(event_time, value)
        history.evict_before(history.watermark - self._retention)
        capped = history.cap(self._max_entity_events)
        if capped:
            self.metrics.entity_history_capped.inc(capped)
        stored = history.to_bytes()
        entities.put(partition, entity_key, stored)
        histories = self._histories
        histories[(partition, entity_key)] = (stored, history)
        if len(histories) > self._history_cache_size:
            del histories[next(iter(histories))]  # the least recently used entity
        dedup.remember(partition, digest, event_time)
        if partition_max is None or event_time > partition_max:
            maxima[partition] = event_time

        batch.accepted.append((record, event_id, entity_id, event_time))
        return None

    def _emit(self, batch: _Batch, now: float, result: Result) -> None:
        """One FeatureVector per accepted event: the batch's rows, in input order.

        The values of the vectors are the rows of one float64 matrix (stateless columns,
        then the aggregates); the codec writes a row as its memory.
        """
        accepted = batch.accepted
        if not accepted:
            return
        fs = self.feature_set
        width = fs.stateless_width
        matrix = np.empty((len(accepted), len(fs.names)), dtype=np.float64)
        if batch.stateless is not None:
            matrix[:, :width] = batch.stateless[batch.stateless_rows]
        else:
            matrix[:, :width] = batch.stateless_values
        if matrix.shape[1] > width:
            matrix[:, width:] = np.frombuffer(b"".join(batch.aggregates), dtype="<f8").reshape(
                len(accepted), matrix.shape[1] - width
            )
        computed_at = int(now * 1000)
        times = [event_time for _, _, _, event_time in accepted]
        self.metrics.feature_age.observe_many(
            np.maximum(computed_at - np.array(times, dtype=np.int64), 0) / 1000.0
        )
        topic = self.output_topic
        name, version, content_hash = fs.name, fs.version, fs.content_hash
        names = self._names
        own_id = self.dedup_field == "event_id"
        categories = fs.categories_many([record.value for record, _, _, _ in accepted])
        event_ids = [
            event_id if own_id else str(record.value["event_id"])
            for record, event_id, _, _ in accepted
        ]
        entity_ids = [entity_id for _, _, entity_id, _ in accepted]
        raw: list[bytes] | list[None] | None = None
        if self._writer is not None:  # the codec's bytes, written for the whole batch
            raw = self._writer.encode(event_ids, entity_ids, times, computed_at, matrix, categories)
        if raw is None:
            raw = [None] * len(accepted)
        outputs = result.outputs
        for row, (record, _, entity_id, event_time) in enumerate(accepted):
            outputs.append(
                Output(
                    topic,
                    FEATURE_VECTOR_SCHEMA,
                    {
                        "event_id": event_ids[row],
                        "entity_id": entity_id,
                        "event_time": event_time,
                        "computed_at": computed_at,
                        "feature_set": name,
                        "feature_set_version": version,
                        "feature_set_hash": content_hash,
                        "names": names,
                        "values": matrix[row],
                        "categories": categories[row],
                    },
                    entity_id,
                    record.replay_headers(),
                    None,
                    raw[row],
                )
            )

    def _reject(self, record: Record, result: Result, violation: Violation) -> Violation:
        self.metrics.validation_failures.labels(violation.reason, violation.field).inc()
        result.rejections.append(
            Rejection(record, violation.reason, violation.message, stage="validate")
        )
        return violation
