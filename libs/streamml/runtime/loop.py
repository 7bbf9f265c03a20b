"""The loop: :class:`StreamRuntime` runs one processor as one member of a consumer group.

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

from streamml.batching import collect_batch
from streamml.codec import AvroCodec
from streamml.deadletter import dead_letter_headers, dlq_topic
from streamml.errors import ConfigError, FencedError, ProcessingError
from streamml.metrics import HealthServer, RuntimeMetrics
from streamml.processor import Halt, Processor
from streamml.runtime import provisioning
from streamml.runtime.clients import make_consumer
from streamml.runtime.executor import (
    BatchExecutor,
    DeadLetter,
    EncodedOutput,
    TopicPartitionKey,
    next_offsets,
)
from streamml.runtime.transactions import (
    COMMIT_TIMEOUT_S,
    RetryableError,
    StuckProducerError,
    TransactionDriver,
    classify,
)
from streamml.settings import HttpSettings, KafkaSettings, RuntimeSettings
from streamml.startup import preflight
from streamml.state import State

log = logging.getLogger(__name__)


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
        self.executor = BatchExecutor(processor, self.inputs, self.codec, self.state)

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
            provisioning.ensure_topics(
                self.kafka, self.settings, list(self.inputs), list(self.changelogs.values())
            )
            self._transactions.start()
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

    def _make_consumer(self) -> Consumer:
        return make_consumer(
            self.kafka,
            self.settings,
            group_id=self.group_id,
            client_id=f"{self.service}-{self.settings.instance_id}",
        )

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
            consumer.committed(partitions, timeout=COMMIT_TIMEOUT_S)
            started = time.monotonic()
            provisioning.restore(
                new_numbers,
                state=self.state,
                changelogs=self.changelogs,
                kafka=self.kafka,
                settings=self.settings,
                group_id=self.group_id,
            )
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

    # -- the loop -------------------------------------------------------------------

    def _loop_once(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        if self._halt is not None:
            self._maybe_resume()
        messages = collect_batch(
            consumer.consume,
            max_records=self.settings.batch_max_records,
            wait_s=self.settings.batch_max_ms / 1000,
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
        except RetryableError as exc:
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
            self._transactions.sleep_backoff(self._failures)
            self._rewind()

    def _transact(self, batch: list[Message]) -> None:
        consumer = self._consumer
        assert consumer is not None
        transactions = self._transactions
        started = time.monotonic()
        transactions.begin()
        committed = False
        try:
            outcome = self.executor.run(batch)
            out_counts = transactions.produce_outputs(outcome.outputs)
            now_ms = int(self._clock() * 1000)
            for letter in outcome.dead_letters:
                self._produce_dead_letter(letter, now_ms)
            for name, topic in self.changelogs.items():
                for partition, key, value in self.state.store(name).pending():
                    transactions.produce_changelog(topic, partition, key, value)
            halt = outcome.halt
            offsets = self._next_offsets(batch, halt)
            self.metrics.batch_seconds.labels(self.service).observe(time.monotonic() - started)
            commit_started = time.monotonic()
            if offsets:
                transactions.send_offsets(offsets, consumer.consumer_group_metadata())
            transactions.commit()
            committed = True
            self.metrics.commit_seconds.labels(self.service).observe(
                time.monotonic() - commit_started
            )
        except KafkaException as exc:
            classify(exc, "transaction")
        except StuckProducerError as exc:
            self.state.abort()
            transactions.replace()
            raise RetryableError("stuck", str(exc)) from exc
        finally:
            if not committed:
                self.state.abort()
                transactions.abort()
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

    def _process(
        self, batch: list[Message]
    ) -> tuple[list[EncodedOutput], list[DeadLetter], Halt | None]:
        outcome = self.executor.run(batch)
        return outcome.outputs, outcome.dead_letters, outcome.halt

    @staticmethod
    def _next_offsets(batch: list[Message], halt: Halt | None) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in next_offsets(batch, halt).items()]

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
            raise RetryableError("rewind", str(exc)) from exc
        for tp in committed:
            offset = tp.offset if tp.offset != OFFSET_INVALID else OFFSET_BEGINNING
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                log.warning("seek %s:%d failed: %s", tp.topic, tp.partition, exc)

    def _produce_dead_letter(self, letter: DeadLetter, now_ms: int) -> None:
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
        self._transactions.produce(target, msg.value, msg.key, headers, None)
        self.metrics.dead_letters.labels(self.service, msg.topic, letter.reason).inc()
        log.info(
            "dead letter topic=%s partition=%d offset=%d reason=%s: %s",
            msg.topic, msg.partition, msg.offset, letter.reason, letter.text[:200],
        )  # fmt: skip

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
        self._transactions.flush(5)
        if self._health is not None:
            self._health.stop()
        log.info("stopped service=%s", self.service)
