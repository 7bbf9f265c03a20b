"""The loop: :class:`StreamRuntime` runs one processor as one member of a consumer group.

Failure handling (the taxonomy is :mod:`streamml.faults`):

- a record that cannot be decoded, is rejected by the processor, or makes it raise goes
  to ``<input topic>.dlq`` byte-identical with ``dlq.*`` headers; the rest goes on;
- when the dead-lettered share of recent records passes a threshold, the dead-letter
  circuit halts the service before that batch commits (partitions paused, not ready,
  operator resume with ``POST /resume``);
- an infrastructure fault (schema registry unavailable, broker error, stuck producer)
  aborts the transaction, discards pending state, rewinds every partition to its last
  committed offset and retries with exponential backoff + jitter (tenacity), ``/readyz``
  saying why; after ``max_attempts`` failures in a row the service exits 1 with one line;
- a fault waiting cannot heal (schema refused, credentials refused) exits 2 with one line;
- a fenced producer (a newer instance took over) exits cleanly with code 0;
- SIGTERM/SIGINT finish the open batch, close the consumer (leaving the group) and exit 0.

Partitions are assigned with the ``range`` assignor, so partition ``p`` of every input
topic lands on the same instance; state stores are kept per partition number and their
changelog partition ``p`` is restored before any record of ``p`` is processed. Restore
progress counts as life for ``/healthz``; readiness stays 503 until it completes.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from streamml.batching import collect_batch
from streamml.circuit import FailStopCircuit
from streamml.codec import AvroCodec
from streamml.deadletter import Origin, dead_letter, dlq_topic, replay_origin
from streamml.errors import (
    BrokerUnavailableError,
    ConfigError,
    FencedError,
    InfrastructureError,
    ProcessingError,
)
from streamml.faults import Fault, classify, kafka_error
from streamml.logs import fields
from streamml.memory import (
    HeapTrimmer,
    can_release_free_memory,
    fix_mmap_threshold,
    heap_bytes,
    release_free_memory,
)
from streamml.metrics import HealthServer, RuntimeMetrics
from streamml.processor import Halt, Processor
from streamml.runtime import provisioning
from streamml.runtime.clients import changelog_topic, group_id_of, make_consumer
from streamml.runtime.executor import (
    BatchExecutor,
    BatchOutcome,
    DeadLetter,
    TopicPartitionKey,
    next_offsets,
)
from streamml.runtime.replayed import DeadLetterOrigins
from streamml.runtime.transactions import (
    COMMIT_TIMEOUT_S,
    StuckProducerError,
    TransactionDriver,
)
from streamml.settings import HttpSettings, KafkaSettings, RuntimeSettings
from streamml.startup import preflight
from streamml.state import State

log = logging.getLogger(__name__)

# How long one wait for committed offsets may block before the wait is reported (the
# broker holds them back while an earlier transaction of the group is open, KIP-447).
_COMMITTED_POLL_S = 2.0


class _CircuitTrippedError(Exception):
    """The dead-letter-rate circuit opened on this batch; it must not commit."""


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
        self.group_id = group_id_of(service, kafka, settings)
        self.transactional_id = f"{self.group_id}-{settings.instance_id}"
        self.changelogs = {name: changelog_topic(self.group_id, name) for name in processor.stores}
        self.state = State(processor.stores)
        self.executor = BatchExecutor(processor, self.inputs, self.codec, self.state)
        self._dead_letter_origins = DeadLetterOrigins(kafka, group_id=self.group_id)
        self.circuit = _dead_letter_circuit(settings) if settings.dead_letter_circuit else None

        self._stop = threading.Event()
        self._resume = threading.Event()
        self._assignment: set[TopicPartitionKey] = set()
        self._owned_partitions: set[int] = set()
        self._restoring = False
        self._assigned_once = False
        self._halt: Halt | None = None
        self._halted_by_runtime = False
        self._halted_at = 0.0
        self._gave_up: str | None = None
        self._last_progress = time.monotonic()
        self._fault: Fault | None = None
        self._fault_attempt = 0
        self._waiting: str | None = None
        self._unreachable: str | None = None
        """Set when the consumer reports that no broker is reachable, cleared when one is."""
        self._outage_seen = False
        """Set with ``_unreachable``; cleared when the producer is renewed after the outage."""
        self._reach_probe_due = 0.0
        self._fatal: str | None = None
        self._lag_due = 0.0
        self._heap = HeapTrimmer(
            growth=settings.heap_trim_growth if can_release_free_memory() else 0.0,
            min_interval_s=settings.heap_trim_min_interval_s,
        )
        self._heap_read_due = 0.0
        self._consumer: Consumer | None = None
        self._transactions = TransactionDriver(
            kafka,
            settings,
            transactional_id=self.transactional_id,
            client_id=f"{service}-{settings.instance_id}",
            on_backpressure=self.metrics.backpressure.labels(service).inc,
            on_abort=self.metrics.transactions.labels(service, "aborted").inc,
            stop=self._stop,
        )
        self._health: HealthServer | None = None
        # One retry policy for every batch (iterating it starts a fresh attempt count).
        self._retrying = Retrying(
            stop=stop_after_attempt(settings.max_attempts),
            wait=wait_exponential(multiplier=settings.backoff_initial_s, max=settings.backoff_max_s)
            + wait_random(0, settings.backoff_initial_s),
            retry=retry_if_exception_type(InfrastructureError),
            sleep=self._backoff,
            before_sleep=self._before_retry,
            reraise=True,
        )

    # -- public ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped. Returns the exit code: 0 clean or fenced, 1 gave up, 2 a
        configuration fault (a missing file, a taken port, wrong credentials or CA)."""
        self._install_signal_handlers()
        fix_mmap_threshold(self.settings.mmap_threshold_bytes)
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
            provisioning.ensure_topics(
                self.kafka, self.settings, list(self.inputs), list(self.changelogs.values())
            )
            self._transactions.start()
            self._consumer = self._make_consumer()
            self._consumer.subscribe(
                list(self.inputs), on_assign=self._on_assign, on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )  # fmt: skip
            log.info("started", extra=fields(
                service=self.service, group=self.group_id,
                transactional_id=self.transactional_id, inputs=",".join(self.inputs),
            ))  # fmt: skip
            while not self._stop.is_set():
                self._last_progress = time.monotonic()
                self._loop_once()
            return 0
        except FencedError as exc:
            log.error("fenced: another instance took over; exiting", extra=fields(error=exc))
            return 0
        except ConfigError as exc:  # waiting cannot heal it
            return self._give_up(classify(exc).one_line(), 2)
        except InfrastructureError as exc:
            tried = f" after {self._fault_attempt} attempts" if self._fault_attempt > 1 else ""
            return self._give_up(f"giving up{tried} ({classify(exc).cause}): {exc}", 1)
        except ProcessingError as exc:
            return self._give_up(f"giving up: {exc}", 1)
        except Exception:
            self._gave_up = "unexpected error in the processing loop"
            log.exception("unexpected error in the processing loop; exiting")
            return 1
        finally:
            self._shutdown()

    def _give_up(self, line: str, code: int) -> int:
        self._gave_up = line
        log.error("%s", line)
        return code

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
        """Alive: not given up, and progress (a loop tick, a retry, restore) within the limit."""
        idle = time.monotonic() - self._last_progress
        return self._gave_up is None and idle < self.settings.liveness_idle_s

    def is_ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why ``/readyz`` is 503, in one line; None when ready."""
        if self._gave_up is not None:
            return f"gave up: {self._gave_up}"
        if self._fault is not None:
            return (
                f"retrying after an infrastructure fault ({self._fault.cause}, attempt "
                f"{self._fault_attempt}/{self.settings.max_attempts}): {self._fault.message}"
            )
        if self._waiting is not None:
            return self._waiting
        if self._unreachable is not None:
            return f"no broker reachable ({self._unreachable}); reconnecting"
        if self._restoring:
            return "restoring state"
        if self._halt is not None:
            return f"halted: {self._halt.reason}"
        if not self._assigned_once:
            return "waiting for a partition assignment"
        if not self.processor.is_ready():
            return "the processor is not ready"
        return None

    def status(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "partitions": sorted(f"{t}:{p}" for t, p in self._assignment),
            "halted": self._halt.reason if self._halt else None,
            "restoring": self._restoring,
            "reason": self.not_ready_reason(),
        }

    def _progress(self) -> None:
        """Count as life for ``/healthz`` (a restore reading records, a retry waiting)."""
        self._last_progress = time.monotonic()

    # -- setup ----------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop())

    def _make_consumer(self) -> Consumer:
        return make_consumer(
            self.kafka,
            self.settings,
            group_id=self.group_id,
            client_id=f"{self.service}-{self.settings.instance_id}",
            on_error=self._on_consumer_error,
        )

    def _on_consumer_error(self, error: KafkaError) -> None:
        """All brokers down: not ready, still alive (librdkafka reconnects by itself).

        Without this an idle service (no batch in flight, so no fault of a batch to
        report) stayed ready through a broker outage.
        """
        if error.fatal():
            self._fatal = error.str()  # raised by the next _poll, on the loop's own path
            return
        if error.code() != KafkaError._ALL_BROKERS_DOWN:
            return
        if self._unreachable is None:
            log.warning("no broker reachable", extra=fields(error=error.str()))
        self._unreachable = error.str()
        self._outage_seen = True

    # -- rebalance callbacks (run inside consumer.consume) ---------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(self.service, "assign").inc()
        self._restoring = True
        try:
            keys = {(tp.topic, tp.partition) for tp in partitions}
            self._assignment |= keys
            new_numbers = sorted({p for _, p in keys} - self._owned_partitions)
            started = time.monotonic()
            self._restore_retrying(consumer, partitions, new_numbers)
            self._owned_partitions |= set(new_numbers)
            if new_numbers:
                self.state.settle(new_numbers)  # not a step of RSS minutes later
                release_free_memory()  # the restore's peak would stay in RSS (memory.py)
                self._heap.trimmed()
            self.metrics.restore_seconds.labels(self.service).observe(time.monotonic() - started)
            if self._halt is not None:
                consumer.pause(partitions)
            self.processor.on_assigned(sorted(keys), self.state)
            log.info("assigned", extra=fields(
                partitions=",".join(f"{t}:{p}" for t, p in sorted(keys)),
                restored=new_numbers, restore_s=round(time.monotonic() - started, 2),
            ))  # fmt: skip
        finally:
            self._restoring = False
            self._waiting = None
            self._assigned_once = True

    def _restore_retrying(
        self, consumer: Consumer, partitions: list[TopicPartition], numbers: list[int]
    ) -> None:
        """Committed offsets and state of newly assigned partitions, retried on a fault.

        An infrastructure fault here (a broker that goes away mid-restore) is retried with
        the batch policy (``max_attempts``, backoff) instead of ending the process; each
        attempt restores from an empty store, so a half-finished restore leaves nothing.
        """
        for attempt in self._retrying.copy(before_sleep=self._before_restore_retry):
            with attempt:
                self._fault_attempt = attempt.retry_state.attempt_number
                if self._fault_attempt > 1:
                    for number in numbers:
                        for store in self.state.stores:
                            store.drop(number)
                self._await_committed(consumer, partitions)
                provisioning.restore(
                    numbers,
                    state=self.state,
                    changelogs=self.changelogs,
                    kafka=self.kafka,
                    settings=self.settings,
                    group_id=self.group_id,
                    on_progress=self._progress,
                    on_wait=self._report_wait,
                )
        self._fault = None
        self._fault_attempt = 0

    def _before_restore_retry(self, retry_state: RetryCallState) -> None:
        assert retry_state.outcome is not None
        exc = retry_state.outcome.exception()
        assert exc is not None
        self._fault = classify(exc)
        log.warning(
            "restoring state after an assignment failed (%s, attempt %d/%d): %s; "
            "retrying in %.1fs",
            self._fault.cause, retry_state.attempt_number, self.settings.max_attempts,
            self._fault.message, retry_state.upcoming_sleep,
        )  # fmt: skip

    def _await_committed(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Fetch the committed offsets, reporting a wait for an earlier open transaction.

        They are fetched with require_stable (read_committed): the broker holds them back
        while a transaction of the group that sent offsets is still open (KIP-447). A
        previous owner killed mid-transaction under another transactional id (a new pod
        name) leaves one open until ``transaction_timeout_ms`` ends it: up to a minute by
        default, which is reported rather than waited out in silence.
        """
        limit = self.settings.transaction_timeout_ms / 1000 + COMMIT_TIMEOUT_S
        started = time.monotonic()
        while True:
            try:
                consumer.committed(partitions, timeout=_COMMITTED_POLL_S)
                return
            except KafkaException as exc:
                timed_out = exc.args[0].code() == KafkaError._TIMED_OUT
                if not timed_out or time.monotonic() - started > limit:
                    raise kafka_error(exc, "fetching committed offsets") from exc
            self._progress()
            self._report_wait(
                "waiting for an earlier transaction of this group to end (an instance that "
                "died mid-transaction under another transactional id; it times out after "
                f"transaction_timeout_ms={self.settings.transaction_timeout_ms})"
            )

    def _report_wait(self, reason: str) -> None:
        if self._waiting != reason:
            log.warning("%s", reason)
        self._waiting = reason

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
        log.info("revoked", extra=fields(partitions=",".join(f"{t}:{p}" for t, p in sorted(keys))))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost (session timed out); dropping their state")
        self._on_revoke(consumer, partitions)

    # -- the loop -------------------------------------------------------------------

    def _loop_once(self) -> None:
        if self._halt is not None:
            self._maybe_resume()
        batch = self._poll()
        if batch:
            self._run_batch(batch)
        self._maybe_report_lag()
        self._maybe_trim_heap()

    def _poll(self) -> list[Message]:
        consumer = self._consumer
        assert consumer is not None
        messages = collect_batch(
            consumer.consume,
            max_records=self.settings.batch_max_records,
            wait_s=self.settings.batch_max_ms / 1000,
        )
        if self._fatal is not None:
            raise ProcessingError(f"consumer error: {self._fatal}")
        batch = []
        for msg in messages:
            error = msg.error()
            if error is None:
                self._unreachable = None
                if (msg.topic(), msg.partition()) in self._assignment:
                    batch.append(msg)
            elif error.fatal():
                raise ProcessingError(f"consumer error: {error.str()}")
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", extra=fields(error=error.str()))
        if self._unreachable is not None and not batch:
            self._probe_brokers()
        return batch

    def _probe_brokers(self) -> None:
        """While no broker is reachable, ask for metadata once a second; an answer clears it.

        An idle consumer gets no event when a broker comes back, so readiness would stay
        503 until the next record without this probe.
        """
        now = time.monotonic()
        if now < self._reach_probe_due or self._consumer is None:
            return
        self._reach_probe_due = now + 1.0
        if not self._broker_answers():
            return
        log.info("a broker is reachable again")
        self._unreachable = None

    def _run_batch(self, batch: list[Message]) -> None:
        """Commit ``batch``; on an infrastructure fault rewind, read it again and retry."""
        try:
            for attempt in self._retrying:
                with attempt:
                    self._fault_attempt = attempt.retry_state.attempt_number
                    if self._fault_attempt > 1:
                        batch = self._read_again()
                    if batch and not self._stop.is_set():
                        self._transact(batch)
        except _CircuitTrippedError as exc:
            self._rewind()
            self._enter_halt(Halt(str(exc)), [], by_runtime=True)
        self._fault = None
        self._fault_attempt = 0

    def _backoff(self, seconds: float) -> None:
        self._progress()
        self._stop.wait(seconds)
        self._progress()

    def _before_retry(self, retry_state: RetryCallState) -> None:
        assert retry_state.outcome is not None
        exc = retry_state.outcome.exception()
        assert exc is not None
        fault = classify(exc)
        self._fault = fault
        log.warning(
            "batch aborted after an infrastructure fault (%s, attempt %d/%d): %s; "
            "retrying in %.1fs from the committed offsets",
            fault.cause, retry_state.attempt_number, self.settings.max_attempts,
            fault.message, retry_state.upcoming_sleep,
        )  # fmt: skip

    def _read_again(self) -> list[Message]:
        """Rewind to the committed offsets and poll until the batch is back (or nothing is)."""
        self._rewind()
        while not self._stop.is_set() and self._assignment:
            self._progress()
            batch = self._poll()
            if batch:
                return batch
        return []

    def _transact(self, batch: list[Message]) -> None:
        consumer = self._consumer
        assert consumer is not None
        transactions = self._transactions
        circuit = self.circuit
        started = time.monotonic()
        try:
            self._renew_producer_after_outage()
            transactions.begin()
        except InfrastructureError as exc:
            self._count_fault(exc)
            raise
        committed = tripped = False
        before = circuit.snapshot() if circuit is not None else None
        try:
            outcome = self.executor.run(batch)
            halt = outcome.halt
            if circuit is not None:
                tripped = True  # until _judge returns: an open circuit stays open
                self._judge(circuit, batch, outcome.dead_letters, halt)
                tripped = False
            out_counts = self._produce_outcome(outcome)
            offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets(batch, halt).items()]
            self.metrics.batch_seconds.labels(self.service).observe(time.monotonic() - started)
            commit_started = time.monotonic()
            if offsets:
                transactions.send_offsets(
                    offsets, consumer.consumer_group_metadata(), self._broker_answers
                )
            transactions.commit()
            committed = True
            self.metrics.commit_seconds.labels(self.service).observe(
                time.monotonic() - commit_started
            )
        except KafkaException as exc:
            error = kafka_error(exc, "transaction")
            if isinstance(error, InfrastructureError):
                self._count_fault(error)
            raise error from exc
        except StuckProducerError as exc:
            self.state.abort()
            transactions.replace(f"transactional producer is stuck: {exc}")
            error = BrokerUnavailableError(f"stuck producer: {exc}")
            self._count_fault(error)
            raise error from exc
        except InfrastructureError as exc:
            self._count_fault(exc)
            raise
        finally:
            if not committed:
                if circuit is not None and before is not None and not tripped:
                    circuit.restore(before)  # the batch is read again: count it once
                self.state.abort()
                transactions.abort()
        self.state.commit()
        self._count_committed(batch, out_counts)
        if halt is not None:
            self._enter_halt(halt, offsets)

    def _renew_producer_after_outage(self) -> None:
        """A new transactional producer for the first transaction after a broker outage.

        librdkafka keeps the coordinator it knew before the outage and can then block in
        send_offsets_to_transaction until the watchdog's deadline (librdkafka #5456,
        #5511): in a soak's broker restart three services waited out those 20 s, and the
        scorer, idle during the outage, another 20 s after them. A new producer finds the
        coordinator afresh; its init_transactions fences the old one. Done once the broker
        answers again, and not for a producer that has begun no transaction yet: the
        watchdog's replacement of a stuck one is made after the outage, though the
        consumer's report of it is only read at the next poll.
        """
        if not self._outage_seen or self._unreachable is not None:
            return
        if self._transactions.fresh:  # made after the outage (the watchdog replaced it)
            self._outage_seen = False
            return
        self._transactions.replace("a broker was unreachable since the last transaction")
        self._outage_seen = False  # after: a renewal that failed is made again next time

    def _broker_answers(self) -> bool:
        """Whether a broker answers a metadata request within a second (on the consumer's
        connections: the producer's may be the ones stuck)."""
        consumer = self._consumer
        if consumer is None:
            return False
        try:
            consumer.list_topics(timeout=1.0)
        except KafkaException:
            return False
        return True

    def _produce_outcome(self, outcome: BatchOutcome) -> dict[str, int]:
        """Outputs, dead letters and pending changelog writes into the open transaction;
        returns the outputs per topic."""
        transactions = self._transactions
        out_counts = transactions.produce_outputs(outcome.outputs)
        now_ms = int(self._clock() * 1000)
        replayed: set[tuple[str, Origin]] = set()
        for letter in outcome.dead_letters:
            if not self._dead_letter_again(letter, replayed):
                self._produce_dead_letter(letter, now_ms)
        for name, topic in self.changelogs.items():
            for partition, key, value in self.state.store(name).pending():
                transactions.produce_changelog(topic, partition, key, value)
        return out_counts

    def _count_committed(self, batch: list[Message], out_counts: dict[str, int]) -> None:
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

    def _judge(
        self,
        circuit: FailStopCircuit,
        batch: list[Message],
        dead: list[DeadLetter],
        halt: Halt | None,
    ) -> None:
        """Feed the dead-letter circuit; raise _CircuitTrippedError (before commit) if it opens."""
        held = len(halt.unconsumed) if halt is not None else 0
        valid = max(0, len(batch) - len(dead) - held)
        tripped = circuit.record_batch(valid, [letter.reason for letter in dead])
        if tripped is None:
            return
        top = ", ".join(f"{reason} x{count}" for reason, count in circuit.top_reasons())
        self.metrics.circuit_trips.labels(self.service).inc()
        raise _CircuitTrippedError(f"{tripped}; top error classes: {top}")

    def _dead_letter_again(self, letter: DeadLetter, seen: set[tuple[str, Origin]]) -> bool:
        """True when ``letter`` is a replayed record already dead-lettered (not sent again)."""
        origin = replay_origin(letter.message.headers)
        if origin is None:
            return False
        target = dlq_topic(letter.message.topic)
        if (target, origin) in seen or self._dead_letter_origins.holds(target, origin):
            self.metrics.replayed_dead_letters.labels(self.service, letter.message.topic).inc()
            topic, partition, offset = origin
            log.info(
                "replayed record failed again; its dead letter is already there",
                extra=fields(topic=topic, partition=partition, offset=offset,
                             reason=letter.reason, dead_letter_topic=target),
            )  # fmt: skip
            return True
        seen.add((target, origin))
        return False

    def _count_fault(self, exc: InfrastructureError) -> None:
        self.metrics.faults.labels(self.service, exc.cause).inc()
        self.metrics.retries.labels(self.service, exc.cause).inc()

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset."""
        consumer = self._consumer
        assert consumer is not None
        tps = [TopicPartition(t, p) for t, p in sorted(self._assignment)]
        if not tps:
            return
        try:
            committed = consumer.committed(tps, timeout=COMMIT_TIMEOUT_S)
        except KafkaException as exc:
            raise kafka_error(exc, "rewind") from exc
        for tp in committed:
            offset = tp.offset if tp.offset != OFFSET_INVALID else OFFSET_BEGINNING
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                log.warning("seek failed", extra=fields(topic=tp.topic, partition=tp.partition,
                                                        error=exc))  # fmt: skip

    def _produce_dead_letter(self, letter: DeadLetter, now_ms: int) -> None:
        msg = letter.message
        record = dead_letter(msg, reason=letter.reason, message=letter.text,
                             service=self.service, stage=letter.stage, now_ms=now_ms)  # fmt: skip
        self._transactions.produce(record.topic, record.value, record.key, record.headers, None)
        self.metrics.dead_letters.labels(self.service, msg.topic, letter.reason).inc()
        log.info("dead letter", extra=fields(
            topic=msg.topic, partition=msg.partition, offset=msg.offset, reason=letter.reason,
            error=letter.text[:200],
        ))  # fmt: skip

    # -- halt (fail-stop) -----------------------------------------------------------

    def _enter_halt(
        self, halt: Halt, offsets: list[TopicPartition], *, by_runtime: bool = False
    ) -> None:
        consumer = self._consumer
        assert consumer is not None
        self._halt = halt
        self._halted_by_runtime = by_runtime
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
            "HALTED (fail-stop); partitions paused; resume with POST /resume%s",
            f" or automatically in {halt.probe_after_s:.0f}s" if halt.probe_after_s else "",
            extra=fields(reason=halt.reason),
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
        if self._halted_by_runtime:
            if self.circuit is not None:
                self.circuit.resume(probe=False)
        else:
            self.processor.on_resume(probe=not by_operator)
        self._halt = None
        self._resume.clear()
        self._consumer.resume([TopicPartition(t, p) for t, p in sorted(self._assignment)])
        self.metrics.halted.labels(self.service).set(0)
        log.warning("resumed after halt",
                    extra=fields(by="operator" if by_operator else "cool-down probe"))  # fmt: skip

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
            log.debug("lag measurement failed", extra=fields(error=exc))

    def _maybe_trim_heap(self) -> None:
        started = time.monotonic()
        if started >= self._heap_read_due:  # the heap's make-up, as often as the RSS check
            self._heap_read_due = started + self._heap.check_interval_s
            for kind, size in (heap_bytes() or {}).items():
                self.metrics.heap_bytes.labels(self.service, kind).set(size)
        trimmed = self._heap.maybe_trim()
        if trimmed is not None:
            before, after = trimmed
            self.metrics.heap_trims.labels(self.service).inc()
            log.info("heap trimmed", extra=fields(
                rss_before_mib=round(before / 2**20, 1), rss_after_mib=round(after / 2**20, 1),
                trim_s=round(time.monotonic() - started, 3),
            ))  # fmt: skip

    def _shutdown(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as exc:
                log.warning("closing the consumer failed", extra=fields(error=exc))
        self._transactions.close(5)
        if self._health is not None:
            self._health.stop()
        log.info("stopped", extra=fields(service=self.service))


def _dead_letter_circuit(settings: RuntimeSettings) -> FailStopCircuit:
    if settings.dead_letter_min_records > settings.dead_letter_window:
        raise ConfigError(
            f"dead_letter_min_records ({settings.dead_letter_min_records}) must not exceed "
            f"dead_letter_window ({settings.dead_letter_window})"
        )
    return FailStopCircuit(
        window=settings.dead_letter_window,
        threshold=settings.dead_letter_threshold,
        min_records=settings.dead_letter_min_records,
        label="dead-letter",
    )
