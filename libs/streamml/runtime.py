"""The exactly-once consume-transform-produce loop every service runs on (KIP-447).

One loop owns all Kafka I/O: it polls a micro-batch (bounded by count and time) with a
``read_committed`` consumer, decodes it, hands it to the service's pure
:class:`~streamml.processor.Processor`, and in ONE transaction of a transactional producer
writes the outputs, the dead letters, the state-changelog changes and the input offsets
(``send_offsets_to_transaction`` with the consumer's group metadata). Either all of that
becomes visible to ``read_committed`` readers, or none of it does.

Failure handling:

- a record that cannot be decoded, is rejected by the processor, or makes it raise goes
  to ``<input topic>.dlq`` byte-identical with ``dlq.*`` headers; the rest goes on;
- an abortable error aborts the transaction, discards pending state, rewinds every
  partition to its last committed offset and retries with exponential backoff + jitter;
  after ``max_attempts`` failures in a row the service reports unhealthy and exits 1;
- a fenced producer (a newer instance took over) exits cleanly with code 0;
- SIGTERM/SIGINT finish the open batch, close the consumer (leaving the group) and exit 0.

Partitions are assigned with the ``range`` assignor, so partition ``p`` of every input
topic lands on the same instance; state stores are kept per partition number and their
changelog partition ``p`` is restored before any record of ``p`` is processed.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streamml.codec import AvroCodec
from streamml.deadletter import dead_letter_headers, dlq_topic
from streamml.errors import ConfigError, DecodeError, FencedError, ProcessingError
from streamml.metrics import HealthServer, RuntimeMetrics
from streamml.processor import Halt, Processor, Record, Rejection, Result
from streamml.settings import HttpSettings, KafkaSettings, RuntimeSettings
from streamml.startup import preflight, retry_transient
from streamml.state import State

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]

_COMMIT_TIMEOUT_S = 30.0
# librdkafka's send_offsets_to_transaction can block past its timeout after the group
# coordinator was down (librdkafka issues #5456, #5511, open in 2.16). The runtime calls
# it from a watchdog thread; past this deadline it replaces the producer (the new one
# fences the stuck one with the same transactional.id) and retries the batch.
_SEND_OFFSETS_DEADLINE_S = 20.0


@dataclass(frozen=True, slots=True)
class _Encoded:
    topic: str
    value: bytes
    key: bytes | str | None
    headers: Sequence[tuple[str, bytes]]
    partition: int | None


@dataclass(frozen=True, slots=True)
class Polled:
    """A consumed message with typed fields (librdkafka's accessors are all optional)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, msg: Message) -> Polled:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        key = msg.key()
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp_ms=msg.timestamp()[1],
            key=key.encode() if isinstance(key, str) else key,
            value=msg.value(),
            # A header without a value becomes b"" (Avro headers in this system never are).
            headers=tuple((k, v or b"") for k, v in (msg.headers() or ())),  # type: ignore[misc,str-unpack]
        )


@dataclass(frozen=True, slots=True)
class _DeadLetter:
    message: Polled
    reason: str
    text: str
    stage: str


class _RetryableError(Exception):
    """The batch failed in a way that a retry from the committed offsets can fix."""


class _StuckProducerError(Exception):
    """A transactional call did not return within its deadline."""


class StreamRuntime:
    """Runs one processor as one member of a consumer group, exactly once."""

    def __init__(
        self,
        *,
        service: str,
        processor: Processor,
        inputs: Mapping[str, str],
        kafka: KafkaSettings,
        settings: RuntimeSettings,
        http: HttpSettings,
        codec: AvroCodec | None = None,
        metrics: RuntimeMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not inputs:
            raise ConfigError(f"{service}: no input topics configured")
        self.service = service
        self.processor = processor
        self.inputs = dict(inputs)
        self.kafka = kafka
        self.settings = settings
        self.http = http
        self.codec = codec or AvroCodec.from_settings(kafka)
        processor.on_codec(self.codec)
        self.metrics = metrics or RuntimeMetrics(service)
        self._clock = clock
        self.group_id = settings.group_id or kafka.topic(service)
        self.transactional_id = f"{self.group_id}-{settings.instance_id}"
        self.changelogs = {name: f"{self.group_id}-{name}-changelog" for name in processor.stores}
        self.state = State(processor.stores)

        self._stop = threading.Event()
        self._resume = threading.Event()
        self._assignment: set[TopicPartitionKey] = set()
        self._owned_partitions: set[int] = set()
        self._restoring = False
        self._assigned_once = False
        self._halt: Halt | None = None
        self._halted_at = 0.0
        self._gave_up = False
        self._last_loop = time.monotonic()
        self._failures = 0
        self._lag_due = 0.0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._abandoned: list[Producer | None] = []
        self._health: HealthServer | None = None

    # -- public ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped. Returns the process exit code (0 clean, 1 gave up, 2 a
        configuration fault: a missing file, a taken port, wrong credentials or CA)."""
        self._install_signal_handlers()
        try:
            preflight(self.kafka, self.http)
        except ConfigError as exc:
            log.error("%s", exc)
            return 2
        self._health = HealthServer(
            self.http.host,
            self.http.port,
            healthy=self.is_healthy,
            ready=self.is_ready,
            status=self.status,
            on_resume=self.request_resume,
        )
        self._health.start()
        try:
            self._ensure_topics()
            self._producer = self._make_producer()
            self._init_transactions()
            self._consumer = self._make_consumer()
            self._consumer.subscribe(
                list(self.inputs), on_assign=self._on_assign, on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )  # fmt: skip
            log.info(
                "started service=%s group=%s transactional_id=%s inputs=%s",
                self.service, self.group_id, self.transactional_id, ",".join(self.inputs),
            )  # fmt: skip
            while not self._stop.is_set():
                self._last_loop = time.monotonic()
                self._loop_once()
            return 0
        except FencedError as exc:
            log.error("fenced: another instance took over (%s); exiting", exc)
            return 0
        except ProcessingError as exc:
            self._gave_up = True
            log.error("giving up: %s", exc)
            return 1
        except Exception:
            self._gave_up = True
            log.exception("unexpected error in the processing loop; exiting")
            return 1
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask the loop to finish its batch and exit (safe from signal handlers)."""
        self._stop.set()

    def request_resume(self) -> bool:
        """Operator command: lift a fail-stop halt. False when not halted."""
        if self._halt is None:
            return False
        self._resume.set()
        return True

    def is_healthy(self) -> bool:
        return not self._gave_up and time.monotonic() - self._last_loop < 120

    def is_ready(self) -> bool:
        return (
            self._assigned_once
            and not self._restoring
            and self._halt is None
            and not self._gave_up
            and self.processor.is_ready()
        )

    def status(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "partitions": sorted(f"{t}:{p}" for t, p in self._assignment),
            "halted": self._halt.reason if self._halt else None,
            "restoring": self._restoring,
        }

    # -- setup ----------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop())

    def _admin(self) -> AdminClient:
        return AdminClient(self.kafka.client_config())

    def _ensure_topics(self) -> None:
        """Check the inputs exist; create missing changelogs and dead-letter topics.

        A dead letter sent to a topic that does not exist would fail its transaction again
        and again, so every input's ``.dlq`` is made sure of before the first record.
        """
        admin = self._admin()
        try:
            metadata = retry_transient(
                lambda: admin.list_topics(timeout=30), what="reading topic metadata"
            )
        except KafkaException as exc:
            admin.poll(0)  # hands librdkafka's queued lines (the cause) to the logging
            raise ProcessingError(
                f"cannot reach Kafka at {self.kafka.bootstrap_servers}: {exc}"
            ) from exc
        missing = [t for t in self.inputs if t not in metadata.topics]
        if missing:
            raise ProcessingError(
                f"input topic(s) {', '.join(missing)} do not exist; create them with "
                "`streamml topics create`"
            )
        partitions = max(len(metadata.topics[t].partitions) for t in self.inputs)
        for name in self.changelogs.values():
            if name in metadata.topics and len(metadata.topics[name].partitions) < partitions:
                raise ProcessingError(
                    f"changelog {name} has {len(metadata.topics[name].partitions)} partitions "
                    f"but the inputs have {partitions}; state cannot follow its partitions"
                )
        replicas = self.settings.changelog_replication_factor
        changelog_config = {
            "cleanup.policy": "compact",
            "min.cleanable.dirty.ratio": "0.1",
            "segment.ms": "600000",
        }
        new = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replicas,
                config=changelog_config,
            )
            for name in self.changelogs.values()
            if name not in metadata.topics
        ]
        new += [
            NewTopic(
                dlq_topic(topic),
                num_partitions=len(metadata.topics[topic].partitions),
                replication_factor=replicas,
                config={"retention.ms": str(30 * 24 * 3600 * 1000)},
            )
            for topic in self.inputs
            if dlq_topic(topic) not in metadata.topics
        ]
        if not new:
            return
        for name, future in admin.create_topics(new).items():
            try:
                future.result()
                log.info("created topic %s", name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ProcessingError(f"cannot create topic {name}: {exc}") from exc

    def _make_producer(self) -> Producer:
        config = {
            **self.kafka.client_config(),
            "transactional.id": self.transactional_id,
            "enable.idempotence": True,
            "transaction.timeout.ms": self.settings.transaction_timeout_ms,
            "linger.ms": 5,
            "queue.buffering.max.messages": self.settings.producer_queue_max_messages,
            "compression.type": "lz4",
            "client.id": f"{self.service}-{self.settings.instance_id}",
        }
        return Producer(config)

    def _make_consumer(self) -> Consumer:
        config = {
            **self.kafka.client_config(),
            "group.id": self.group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.settings.auto_offset_reset,
            "partition.assignment.strategy": "range",
            "session.timeout.ms": self.settings.session_timeout_ms,
            "heartbeat.interval.ms": max(1000, self.settings.session_timeout_ms // 4),
            "max.poll.interval.ms": self.settings.max_poll_interval_ms,
            "client.id": f"{self.service}-{self.settings.instance_id}",
            "fetch.queue.backoff.ms": self.settings.fetch_queue_backoff_ms,
        }
        return Consumer(config)

    def _init_transactions(self) -> None:
        assert self._producer is not None
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                self._producer.init_transactions(_COMMIT_TIMEOUT_S)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal():
                    raise FencedError(error.str()) from exc
                log.warning("init_transactions failed (attempt %d): %s", attempt, error.str())
                self._sleep_backoff(attempt)
        raise ProcessingError("could not initialise transactions; is the broker up?")

    # -- rebalance callbacks (run inside consumer.consume) ---------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(self.service, "assign").inc()
        self._restoring = True
        try:
            keys = {(tp.topic, tp.partition) for tp in partitions}
            self._assignment |= keys
            new_numbers = sorted({p for _, p in keys} - self._owned_partitions)
            # Committed offsets are fetched with require_stable (read_committed), which
            # waits for the previous owner's open transaction to finish first (KIP-447).
            consumer.committed(partitions, timeout=_COMMIT_TIMEOUT_S)
            started = time.monotonic()
            self._restore(new_numbers)
            self._owned_partitions |= set(new_numbers)
            self.metrics.restore_seconds.labels(self.service).observe(time.monotonic() - started)
            if self._halt is not None:
                consumer.pause(partitions)
            self.processor.on_assigned(sorted(keys), self.state)
            log.info(
                "assigned %s (restored state of partitions %s in %.2fs)",
                ",".join(f"{t}:{p}" for t, p in sorted(keys)), new_numbers,
                time.monotonic() - started,
            )  # fmt: skip
        finally:
            self._restoring = False
            self._assigned_once = True

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(self.service, "revoke").inc()
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._assignment -= keys
        still_owned = {p for _, p in self._assignment}
        for number in self._owned_partitions - still_owned:
            for store in self.state.stores:
                store.drop(number)
        self._owned_partitions &= still_owned
        self.processor.on_revoked(sorted(keys))
        for topic, partition in keys:
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(self.service, topic, str(partition))
        log.info("revoked %s", ",".join(f"{t}:{p}" for t, p in sorted(keys)) or "-")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost (session timed out); dropping their state")
        self._on_revoke(consumer, partitions)

    def _restore(self, numbers: Sequence[int]) -> None:
        """Load changelog partitions ``numbers`` of every store, up to their end."""
        if not numbers or not self.changelogs:
            for number in numbers:
                for store in self.state.stores:
                    store.assign(number)
            return
        from confluent_kafka import IsolationLevel
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        admin = self._admin()
        tps = [TopicPartition(t, n) for t in self.changelogs.values() for n in numbers]
        # Wait until no transaction is open on the changelog partitions (last stable
        # offset == high watermark), so that reading to the end sees every committed write.
        deadline = time.monotonic() + self.settings.transaction_timeout_ms / 1000
        while True:
            committed = self._list_offsets(admin, tps, IsolationLevel.READ_COMMITTED, OffsetSpec)
            latest = self._list_offsets(admin, tps, IsolationLevel.READ_UNCOMMITTED, OffsetSpec)
            if committed == latest or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        store_of = {topic: name for name, topic in self.changelogs.items()}
        for number in numbers:
            for store in self.state.stores:
                store.assign(number)
        todo = [tp for tp in tps if latest[(tp.topic, tp.partition)] > 0]
        if not todo:
            return
        restorer = Consumer(
            {
                **self.kafka.client_config(),
                "group.id": f"{self.group_id}-restore",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.max.bytes": 52428800,
            }
        )
        try:
            restorer.assign(
                [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in todo]
            )
            pending = {(tp.topic, tp.partition) for tp in todo}
            count = 0
            while pending:
                for msg in restorer.consume(10_000, timeout=0.2):
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard((msg.topic(), msg.partition()))
                            continue
                        raise ProcessingError(f"restoring state: {error.str()}")
                    polled = Polled.of(msg)
                    store = self.state.store(store_of[polled.topic])
                    store.restore(polled.partition, polled.key or b"", polled.value)
                    count += 1
            log.info("restored %d changelog records for partitions %s", count, list(numbers))
        finally:
            restorer.close()

    @staticmethod
    def _list_offsets(
        admin: AdminClient, tps: Sequence[TopicPartition], isolation: Any, spec: Any
    ) -> dict[TopicPartitionKey, int]:
        """End offsets of ``tps``; retries while leadership of new partitions settles."""
        request = {tp: spec.latest() for tp in tps}

        def list_once() -> dict[TopicPartitionKey, int]:
            futures = admin.list_offsets(request, isolation_level=isolation, request_timeout=30)
            return {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}

        try:
            # A changelog created moments ago, or a fresh broker, may answer
            # NOT_LEADER_OR_FOLLOWER / LEADER_NOT_AVAILABLE for a while without marking
            # the error retriable(): streamml.startup knows which errors heal by waiting.
            return retry_transient(list_once, what="listing changelog offsets")
        except KafkaException as exc:
            raise ProcessingError(f"listing changelog offsets: {exc}") from exc

    # -- the loop -------------------------------------------------------------------

    def _loop_once(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        if self._halt is not None:
            self._maybe_resume()
        messages = consumer.consume(
            self.settings.batch_max_records, timeout=self.settings.batch_max_ms / 1000
        )
        batch = []
        for msg in messages:
            error = msg.error()
            if error is None:
                if (msg.topic(), msg.partition()) in self._assignment:
                    batch.append(msg)
            elif error.fatal():
                raise ProcessingError(f"consumer error: {error.str()}")
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", error.str())
        if batch:
            self._run_batch(batch)
        self._maybe_report_lag()

    def _run_batch(self, batch: list[Message]) -> None:
        try:
            self._transact(batch)
            self._failures = 0
        except _RetryableError as exc:
            self._failures += 1
            self.metrics.retries.labels(self.service, str(exc.args[0])).inc()
            if self._failures >= self.settings.max_attempts:
                raise ProcessingError(
                    f"{self._failures} failed attempts in a row; last: {exc.args[1]}"
                ) from exc
            log.warning(
                "batch failed (attempt %d/%d): %s; rewinding to committed offsets",
                self._failures, self.settings.max_attempts, exc.args[1],
            )  # fmt: skip
            self._sleep_backoff(self._failures)
            self._rewind()

    def _transact(self, batch: list[Message]) -> None:
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        started = time.monotonic()
        try:
            producer.begin_transaction()
        except KafkaException as exc:
            self._classify(exc, "begin")
        committed = False
        try:
            outputs, dead, halt = self._process(batch)
            out_counts: dict[str, int] = {}
            produce = producer.produce
            for out in outputs:
                if out.headers or out.partition is not None:
                    self._produce(out.topic, out.value, out.key, out.headers, out.partition)
                else:
                    try:  # the common case, without building keyword arguments
                        produce(out.topic, out.value, out.key)
                    except BufferError:
                        self._produce(out.topic, out.value, out.key, (), None)
                out_counts[out.topic] = out_counts.get(out.topic, 0) + 1
            now_ms = int(self._clock() * 1000)
            for letter in dead:
                self._produce_dead_letter(letter, now_ms)
            for name, topic in self.changelogs.items():
                for partition, key, value in self.state.store(name).pending():
                    try:
                        produce(topic, value, key, partition)
                    except BufferError:
                        self._produce(topic, value, key, (), partition)
            offsets = self._next_offsets(batch, halt)
            self.metrics.batch_seconds.labels(self.service).observe(time.monotonic() - started)
            commit_started = time.monotonic()
            if offsets:
                self._send_offsets(producer, offsets, consumer.consumer_group_metadata())
            self._commit(producer)
            committed = True
            self.metrics.commit_seconds.labels(self.service).observe(
                time.monotonic() - commit_started
            )
        except KafkaException as exc:
            self._classify(exc, "transaction")
        except _StuckProducerError as exc:
            self._replace_producer()
            raise _RetryableError("stuck", str(exc)) from exc
        finally:
            if not committed:
                self._abort()
        self.state.commit()
        self.metrics.transactions.labels(self.service, "committed").inc()
        self.metrics.batch_size.labels(self.service).observe(len(batch))
        in_counts: dict[str | None, int] = {}
        for msg in batch:
            in_topic = msg.topic()
            in_counts[in_topic] = in_counts.get(in_topic, 0) + 1
        for in_name, count in in_counts.items():
            self.metrics.records_in.labels(self.service, in_name).inc(count)
        for topic, count in out_counts.items():
            self.metrics.records_out.labels(self.service, topic).inc(count)
        if halt is not None:
            self._enter_halt(halt, offsets)

    def _send_offsets(
        self, producer: Producer, offsets: list[TopicPartition], group_metadata: Any
    ) -> None:
        done = threading.Event()
        failure: list[BaseException] = []

        def call() -> None:
            try:
                producer.send_offsets_to_transaction(offsets, group_metadata, _COMMIT_TIMEOUT_S)
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=call, name="send-offsets", daemon=True).start()
        if not done.wait(_SEND_OFFSETS_DEADLINE_S):
            raise _StuckProducerError(
                f"send_offsets_to_transaction did not return in {_SEND_OFFSETS_DEADLINE_S:.0f}s"
            )
        if failure:
            raise failure[0]

    def _replace_producer(self) -> None:
        """Swap in a new producer; its init_transactions fences and aborts the stuck one."""
        log.warning("transactional producer is stuck; replacing it (fences the old one)")
        # The stuck producer is kept referenced, never destroyed under its blocked thread.
        self._abandoned.append(self._producer)
        self.state.abort()
        self._producer = self._make_producer()
        self._init_transactions()

    def _commit(self, producer: Producer) -> None:
        deadline = time.monotonic() + self.settings.transaction_timeout_ms / 1000
        while True:
            try:
                producer.commit_transaction(_COMMIT_TIMEOUT_S)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.retriable() and time.monotonic() < deadline:
                    log.warning("commit_transaction: %s; retrying", error.str())
                    time.sleep(0.5)
                    continue
                raise

    def _abort(self) -> None:
        self.state.abort()
        producer = self._producer
        assert producer is not None
        self.metrics.transactions.labels(self.service, "aborted").inc()
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                producer.abort_transaction(_COMMIT_TIMEOUT_S)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal():
                    raise FencedError(error.str()) from exc
                if error.code() == KafkaError._STATE:
                    return  # no transaction in progress
                log.warning("abort_transaction failed (attempt %d): %s", attempt, error.str())
                self._sleep_backoff(attempt)
        raise ProcessingError("could not abort the transaction; the broker is unreachable")

    def _classify(self, exc: KafkaException, where: str) -> None:
        error: KafkaError = exc.args[0]
        if error.fatal() or error.code() in (
            KafkaError._FENCED,
            KafkaError.PRODUCER_FENCED,
            KafkaError.INVALID_PRODUCER_EPOCH,
        ):
            raise FencedError(error.str()) from exc
        if error.txn_requires_abort() or error.retriable():
            raise _RetryableError(where, error.str()) from exc
        raise _RetryableError(where, error.str()) from exc

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset."""
        consumer = self._consumer
        assert consumer is not None
        tps = [TopicPartition(t, p) for t, p in sorted(self._assignment)]
        if not tps:
            return
        try:
            committed = consumer.committed(tps, timeout=_COMMIT_TIMEOUT_S)
        except KafkaException as exc:
            raise _RetryableError("rewind", str(exc)) from exc
        for tp in committed:
            offset = tp.offset if tp.offset != OFFSET_INVALID else OFFSET_BEGINNING
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                log.warning("seek %s:%d failed: %s", tp.topic, tp.partition, exc)

    def _sleep_backoff(self, attempt: int) -> None:
        delay = min(
            self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** (attempt - 1)
        )
        self._stop.wait(delay * random.uniform(0.5, 1.0))

    # -- processing -----------------------------------------------------------------

    def _process(
        self, batch: list[Message]
    ) -> tuple[list[_Encoded], list[_DeadLetter], Halt | None]:
        # The hot path reads librdkafka's messages directly (a typed copy per message
        # costs ~2 us); only dead letters become Polled.
        dead: list[_DeadLetter] = []
        records: list[Record] = []
        by_position: dict[tuple[str, int, int], Message] = {}
        decode, inputs = self.codec.decode, self.inputs
        for msg in batch:
            topic: str = msg.topic()  # type: ignore[assignment]
            value = msg.value()
            schema = inputs[topic]
            try:
                if value is None:
                    raise DecodeError("record has no value (a tombstone)")
                decoded = decode(value, schema, topic=topic)
            except DecodeError as exc:
                dead.append(_DeadLetter(Polled.of(msg), "decode", str(exc), "decode"))
                continue
            headers = msg.headers()
            partition: int = msg.partition()  # type: ignore[assignment]
            offset: int = msg.offset()  # type: ignore[assignment]
            records.append(
                Record(
                    topic,
                    partition,
                    offset,
                    msg.timestamp()[1],
                    msg.key(),
                    decoded,
                    tuple(headers) if headers else (),  # type: ignore[arg-type]
                    schema,
                    value,
                )
            )
            by_position[(topic, partition, offset)] = msg
        if not records:
            return [], dead, None
        savepoint = self.state.savepoint()
        try:
            result = self.processor.process(records, self.state)
            outputs = self._encode(result)
        except Exception as exc:  # isolate the record(s) that made the processor raise
            self.state.rollback(savepoint)
            log.warning("processor raised on a batch (%s); isolating records one by one", exc)
            return self._process_one_by_one(records, by_position, dead)
        self.state.release(savepoint)
        dead.extend(self._rejections(result.rejections, by_position))
        return outputs, dead, result.halt

    def _process_one_by_one(
        self,
        records: list[Record],
        by_position: Mapping[tuple[str, int, int], Message],
        dead: list[_DeadLetter],
    ) -> tuple[list[_Encoded], list[_DeadLetter], Halt | None]:
        outputs: list[_Encoded] = []
        for index, record in enumerate(records):
            savepoint = self.state.savepoint()
            try:
                result = self.processor.process([record], self.state)
                encoded = self._encode(result)
            except Exception as exc:
                self.state.rollback(savepoint)
                msg = by_position[(record.topic, record.partition, record.offset)]
                dead.append(
                    _DeadLetter(
                        Polled.of(msg),
                        type(exc).__name__,
                        f"{type(exc).__name__}: {exc}",
                        "process",
                    )
                )
                continue
            self.state.release(savepoint)
            outputs.extend(encoded)
            dead.extend(self._rejections(result.rejections, by_position))
            if result.halt is not None:
                rest = list(result.halt.unconsumed) + records[index + 1 :]
                halt = Halt(result.halt.reason, rest, result.halt.probe_after_s)
                return outputs, dead, halt
        return outputs, dead, None

    def _rejections(
        self, rejections: Iterable[Rejection], by_position: Mapping[tuple[str, int, int], Message]
    ) -> list[_DeadLetter]:
        letters = []
        for rejection in rejections:
            rec = rejection.record
            msg = by_position[(rec.topic, rec.partition, rec.offset)]
            letters.append(
                _DeadLetter(Polled.of(msg), rejection.reason, rejection.message, rejection.stage)
            )
        return letters

    def _encode(self, result: Result) -> list[_Encoded]:
        encode = self.codec.encode
        return [
            _Encoded(
                out.topic,
                out.raw_value
                if out.raw_value is not None
                else encode(out.schema, out.value, topic=out.topic),
                out.key,
                out.headers,
                out.partition,
            )
            for out in result.outputs
        ]

    def _produce_dead_letter(self, letter: _DeadLetter, now_ms: int) -> None:
        msg = letter.message
        headers = dead_letter_headers(
            msg.headers,
            error_class=letter.reason,
            message=letter.text,
            service=self.service,
            stage=letter.stage,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            source_timestamp_ms=msg.timestamp_ms,
            now_ms=now_ms,
        )
        target = dlq_topic(msg.topic)
        self._produce(target, msg.value, msg.key, headers, None)
        self.metrics.dead_letters.labels(self.service, msg.topic, letter.reason).inc()
        log.info(
            "dead letter topic=%s partition=%d offset=%d reason=%s: %s",
            msg.topic, msg.partition, msg.offset, letter.reason, letter.text[:200],
        )  # fmt: skip

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: Sequence[tuple[str, bytes]],
        partition: int | None,
    ) -> None:
        producer = self._producer
        assert producer is not None
        kwargs: dict[str, Any] = {"value": value, "key": key}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                return
            except BufferError:
                # Backpressure: the local queue is full. Consumption is paused (we are not
                # polling the consumer) until the producer drains.
                self.metrics.backpressure.labels(self.service).inc()
                producer.poll(0.05)

    def _next_offsets(self, batch: list[Message], halt: Halt | None) -> list[TopicPartition]:
        """Offsets to commit: one past the last consumed record, per partition."""
        first_unconsumed: dict[TopicPartitionKey, int] = {}
        if halt is not None:
            for rec in halt.unconsumed:
                held = (rec.topic, rec.partition)
                first_unconsumed[held] = min(first_unconsumed.get(held, rec.offset), rec.offset)
        next_offset: dict[TopicPartitionKey, int] = {}
        for msg in batch:
            key: TopicPartitionKey = (msg.topic(), msg.partition())  # type: ignore[assignment]
            offset: int = msg.offset()  # type: ignore[assignment]
            limit = first_unconsumed.get(key)
            if limit is not None and offset >= limit:
                next_offset.setdefault(key, limit)
                continue
            next_offset[key] = max(next_offset.get(key, -1), offset + 1)
        for key, limit in first_unconsumed.items():
            next_offset[key] = min(next_offset.get(key, limit), limit)
        return [TopicPartition(t, p, o) for (t, p), o in sorted(next_offset.items())]

    # -- halt (fail-stop) -----------------------------------------------------------

    def _enter_halt(self, halt: Halt, offsets: list[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        self._halt = halt
        self._halted_at = time.monotonic()
        self._resume.clear()
        assigned = [TopicPartition(t, p) for t, p in sorted(self._assignment)]
        consumer.pause(assigned)
        unconsumed = {(r.topic, r.partition) for r in halt.unconsumed}
        for tp in offsets:
            if (tp.topic, tp.partition) in unconsumed:
                consumer.seek(tp)
        self.metrics.halted.labels(self.service).set(1)
        log.error(
            "HALTED (fail-stop): %s; partitions paused; resume with POST /resume%s",
            halt.reason,
            f" or automatically in {halt.probe_after_s:.0f}s" if halt.probe_after_s else "",
        )

    def _maybe_resume(self) -> None:
        halt = self._halt
        assert halt is not None and self._consumer is not None
        by_operator = self._resume.is_set()
        by_timer = (
            halt.probe_after_s is not None
            and time.monotonic() - self._halted_at >= halt.probe_after_s
        )
        if not (by_operator or by_timer):
            return
        self.processor.on_resume(probe=not by_operator)
        self._halt = None
        self._resume.clear()
        self._consumer.resume([TopicPartition(t, p) for t, p in sorted(self._assignment)])
        self.metrics.halted.labels(self.service).set(0)
        log.warning("resumed after halt (%s)", "operator" if by_operator else "cool-down probe")

    # -- lag and shutdown -----------------------------------------------------------

    def _maybe_report_lag(self) -> None:
        now = time.monotonic()
        self.metrics.ready.labels(self.service).set(1 if self.is_ready() else 0)
        if now < self._lag_due or self._consumer is None:
            return
        self._lag_due = now + self.settings.lag_interval_s
        for store in self.state.stores:
            self.metrics.state_keys.labels(self.service, store.name).set(store.size())
        try:
            positions = self._consumer.position(
                [TopicPartition(t, p) for t, p in sorted(self._assignment)]
            )
            for tp in positions:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    self.metrics.lag.labels(self.service, tp.topic, str(tp.partition)).set(
                        max(0, high - tp.offset)
                    )
        except KafkaException as exc:
            log.debug("lag measurement failed: %s", exc)

    def _shutdown(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as exc:
                log.warning("closing the consumer: %s", exc)
        if self._producer is not None:
            self._producer.flush(5)
        if self._health is not None:
            self._health.stop()
        log.info("stopped service=%s", self.service)
