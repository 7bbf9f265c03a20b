"""The transaction driver: one transactional producer, begin, produce, send offsets, commit, abort.

It knows nothing of records or state: the loop decides what goes into a transaction, the
driver gets it onto the broker. Its own calls (init, abort, commit) are retried with
tenacity; a Kafka error it gives up on is raised typed (:func:`streamml.faults.kafka_error`):
FencedError, an AuthenticationError (exit 2) or a BrokerUnavailableError (the loop
retries the batch).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
    wait_random,
)

from streamml.faults import kafka_error
from streamml.logs import fields
from streamml.runtime.clients import make_producer
from streamml.runtime.executor import EncodedOutput
from streamml.settings import KafkaSettings, RuntimeSettings

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 30.0
# librdkafka's send_offsets_to_transaction can block past its timeout after the group
# coordinator was down (librdkafka issues #5456, #5511, open in 2.16). The runtime calls
# it from a watchdog thread; past this deadline it replaces the producer (the new one
# fences the stuck one with the same transactional.id) and retries the batch.
SEND_OFFSETS_DEADLINE_S = 20.0
# Sooner when the call is blocked this long while a broker answers a metadata request: a
# call that is only waiting for a broker ends a moment after one is back (a flush of at
# most FLUSH_BEFORE_OFFSETS_S, then milliseconds); one still blocked then is stuck.
SEND_OFFSETS_SUSPECT_S = 8.0
# How long send_offsets waits for the batch's records to be delivered before it sends the
# offsets anyway (see TransactionDriver.send_offsets).
FLUSH_BEFORE_OFFSETS_S = 1.0


class StuckProducerError(Exception):
    """A transactional call did not return within its deadline."""


class TransactionDriver:
    """Owns the transactional producer of one instance."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: RuntimeSettings,
        *,
        transactional_id: str,
        client_id: str,
        on_backpressure: Callable[[], None],
        on_abort: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.transactional_id = transactional_id
        self.client_id = client_id
        self._on_backpressure = on_backpressure
        self._on_abort = on_abort
        self._stop = stop
        self._producer: Producer | None = None
        # The current producer's last send_offsets call: set once that call has returned.
        self._call_done: threading.Event | None = None
        # Replaced producers, each with its last call (None: none made). One is released
        # once that call has returned, never under a thread still blocked in it.
        self._abandoned: list[tuple[Producer, threading.Event | None]] = []
        self._releases: list[threading.Thread] = []
        self.fresh = False
        """Transactions initialised and none begun since: a broker answered after any outage
        the producer saw (its coordinator is the one it found then)."""

    @property
    def producer(self) -> Producer:
        producer = self._producer
        assert producer is not None, "start() first"
        return producer

    def start(self) -> None:
        """Create the producer and initialise transactions (fences an older instance)."""
        self._producer = make_producer(
            self.kafka,
            self.settings,
            transactional_id=self.transactional_id,
            client_id=self.client_id,
        )
        self._init_transactions()
        self.fresh = True

    def _init_transactions(self) -> None:
        producer = self.producer
        try:
            for attempt in self._retrying("init_transactions"):
                with attempt:
                    producer.init_transactions(COMMIT_TIMEOUT_S)
        except KafkaException as exc:
            raise kafka_error(exc, "could not initialise transactions; is the broker up?") from exc

    def begin(self) -> None:
        if self._abandoned:
            self._release_abandoned()
        self.fresh = False
        try:
            self.producer.begin_transaction()
        except KafkaException as exc:
            raise kafka_error(exc, "begin_transaction") from exc

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: Sequence[tuple[str, bytes]],
        partition: int | None,
    ) -> None:
        """Produce one record, waiting while the local queue is full (backpressure)."""
        producer = self.producer
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
                self._on_backpressure()
                producer.poll(0.05)

    def produce_outputs(self, outputs: Sequence[EncodedOutput]) -> dict[str, int]:
        """Produce the outputs of a batch; returns how many went to each topic."""
        out_counts: dict[str, int] = {}
        produce = self.producer.produce
        for out in outputs:
            if out.headers or out.partition is not None:
                self.produce(out.topic, out.value, out.key, out.headers, out.partition)
            else:
                try:  # the common case, without building keyword arguments
                    produce(out.topic, out.value, out.key)
                except BufferError:
                    self.produce(out.topic, out.value, out.key, (), None)
            out_counts[out.topic] = out_counts.get(out.topic, 0) + 1
        return out_counts

    def produce_changelog(
        self, topic: str, partition: int, key: bytes, value: bytes | None
    ) -> None:
        try:
            self.producer.produce(topic, value, key, partition)
        except BufferError:
            self.produce(topic, value, key, (), partition)

    def send_offsets(
        self,
        offsets: list[TopicPartition],
        group_metadata: Any,
        broker_answers: Callable[[], bool] | None = None,
    ) -> None:
        """send_offsets_to_transaction under the watchdog: StuckProducerError once the call
        is blocked SEND_OFFSETS_SUSPECT_S while ``broker_answers()`` (asked once a second
        from then on), or SEND_OFFSETS_DEADLINE_S in any case."""
        producer = self.producer
        done, gave_up = threading.Event(), threading.Event()
        failure: list[BaseException] = []

        def call() -> None:
            started = time.monotonic()
            try:
                # The batch's records delivered first: their AddPartitionsToTxn has then
                # returned, so the coordinator does not refuse the AddOffsetsToTxn below as
                # CONCURRENT_TRANSACTIONS (retried after retry.backoff.ms), which it did for
                # a quarter of small batches (docs/decisions/runtime-transaction-latency.md).
                # commit_transaction flushes anyway; this only moves the wait earlier. Not
                # delivered in FLUSH_BEFORE_OFFSETS_S (a broker away): go on as before.
                producer.flush(FLUSH_BEFORE_OFFSETS_S)
                producer.send_offsets_to_transaction(offsets, group_metadata, COMMIT_TIMEOUT_S)
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()
                if gave_up.is_set():  # the watchdog gave up on it: say how it ended
                    log.info("a stuck send_offsets_to_transaction returned", extra=fields(
                        after_s=round(time.monotonic() - started, 1),
                        error=failure[0] if failure else None,
                    ))  # fmt: skip

        self._call_done = done
        started = time.monotonic()
        deadline = started + SEND_OFFSETS_DEADLINE_S
        threading.Thread(target=call, name="send-offsets", daemon=True).start()
        wait_s = SEND_OFFSETS_SUSPECT_S if broker_answers is not None else SEND_OFFSETS_DEADLINE_S
        while not done.wait(max(0.0, min(wait_s, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                reason = f"did not return in {SEND_OFFSETS_DEADLINE_S:.0f}s"
            elif broker_answers is not None and broker_answers() and not done.is_set():
                reason = f"blocked {time.monotonic() - started:.0f}s while a broker answers"
            else:
                wait_s = 1.0
                continue
            gave_up.set()
            raise StuckProducerError(f"send_offsets_to_transaction {reason}")
        if failure:
            raise failure[0]

    def replace(self, reason: str) -> None:
        """Swap in a new producer; its init_transactions fences and aborts the old one."""
        log.warning("%s; replacing the transactional producer (fences the old one)", reason)
        if self._producer is not None:
            self._abandoned.append((self._producer, self._call_done))
        self._call_done = None
        self.start()
        self._release_abandoned()

    def _release_abandoned(self) -> None:
        """Let go of each replaced producer whose last call has returned.

        Its librdkafka handle (threads, sockets, buffers) is destroyed when the last
        reference goes, here on a thread of its own: rd_kafka_destroy joins librdkafka's
        threads, and a batch need not wait for that. A producer still blocked in a call is
        kept for a later try (begin calls this while any is held): destroying it under that
        thread would free what the thread uses.
        """
        done: list[Producer] = []
        held: list[tuple[Producer, threading.Event | None]] = []
        for producer, call in self._abandoned:
            if call is None or call.is_set():  # read once: a call may return meanwhile
                done.append(producer)
            else:
                held.append((producer, call))
        if not done:
            return
        self._abandoned = held
        self._releases = [t for t in self._releases if t.is_alive()]
        thread = threading.Thread(
            target=_release, args=(done, len(held)), name="producer-release", daemon=True
        )
        del done, producer  # the release thread holds the last references
        thread.start()
        self._releases.append(thread)

    def close(self, timeout_s: float) -> None:
        """At shutdown: deliver what is queued, and wait for replaced producers' release."""
        self.flush(timeout_s)
        deadline = time.monotonic() + timeout_s
        for thread in self._releases:
            thread.join(max(0.0, deadline - time.monotonic()))

    def commit(self) -> None:
        """Commit; a retriable error is retried until the transaction would time out."""
        producer = self.producer
        retrying = Retrying(
            stop=stop_after_delay(self.settings.transaction_timeout_ms / 1000),
            wait=wait_fixed(0.5),
            retry=retry_if_exception(_retriable),
            before_sleep=_log_retry("commit_transaction"),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                producer.commit_transaction(COMMIT_TIMEOUT_S)

    def abort(self) -> None:
        producer = self.producer
        self._on_abort()
        try:
            for attempt in self._retrying("abort_transaction"):
                with attempt:
                    try:
                        producer.abort_transaction(COMMIT_TIMEOUT_S)
                    except KafkaException as exc:
                        if exc.args[0].code() == KafkaError._STATE:
                            return  # no transaction in progress
                        raise
        except KafkaException as exc:
            raise kafka_error(exc, "could not abort the transaction") from exc

    def _retrying(self, call: str) -> Retrying:
        """Retries of a producer call: backoff with jitter; a fatal (fenced) error stops."""
        return Retrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=wait_exponential(
                multiplier=self.settings.backoff_initial_s, max=self.settings.backoff_max_s
            )
            + wait_random(0, self.settings.backoff_initial_s),
            retry=retry_if_exception(_not_fatal),
            sleep=self._wait,
            before_sleep=_log_retry(call),
            reraise=True,
        )

    def _wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def flush(self, timeout_s: float) -> None:
        """Deliver what is queued; a fenced producer raises here, and has nothing to deliver."""
        if self._producer is None:
            return
        try:
            self._producer.flush(timeout_s)
        except KafkaException as exc:  # found by the SIGSTOP test: a fenced flush raised
            log.info("producer not flushed at shutdown", extra=fields(error=exc.args[0].str()))


def _release(producers: list[Producer], still_held: int) -> None:
    started, count = time.monotonic(), len(producers)
    producers.clear()  # the last references: librdkafka's destroy runs here
    log.info("replaced transactional producers released", extra=fields(
        released=count, release_s=round(time.monotonic() - started, 3), still_held=still_held,
    ))  # fmt: skip


def _not_fatal(exc: BaseException) -> bool:
    return isinstance(exc, KafkaException) and not exc.args[0].fatal()


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, KafkaException) and bool(exc.args[0].retriable())


def _log_retry(call: str) -> Callable[[RetryCallState], None]:
    def log_it(state: RetryCallState) -> None:
        assert state.outcome is not None
        log.warning("transaction call failed; retrying", extra=fields(
            call=call, attempt=state.attempt_number, error=state.outcome.exception(),
        ))  # fmt: skip

    return log_it
