"""The transaction driver: one transactional producer, begin, produce, send offsets, commit, abort.

It knows nothing of records or state: the loop decides what goes into a transaction, the
driver gets it onto the broker and says how a Kafka error is to be taken (fenced, or worth
a retry of the batch).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from streamml.errors import FencedError, ProcessingError
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


class RetryableError(Exception):
    """The batch failed in a way that a retry from the committed offsets can fix."""


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
        self._abandoned: list[Producer | None] = []

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

    def _init_transactions(self) -> None:
        producer = self.producer
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                producer.init_transactions(COMMIT_TIMEOUT_S)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal():
                    raise FencedError(error.str()) from exc
                log.warning("init_transactions failed (attempt %d): %s", attempt, error.str())
                self.sleep_backoff(attempt)
        raise ProcessingError("could not initialise transactions; is the broker up?")

    def begin(self) -> None:
        try:
            self.producer.begin_transaction()
        except KafkaException as exc:
            classify(exc, "begin")

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

    def send_offsets(self, offsets: list[TopicPartition], group_metadata: Any) -> None:
        producer = self.producer
        done = threading.Event()
        failure: list[BaseException] = []

        def call() -> None:
            try:
                producer.send_offsets_to_transaction(offsets, group_metadata, COMMIT_TIMEOUT_S)
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=call, name="send-offsets", daemon=True).start()
        if not done.wait(SEND_OFFSETS_DEADLINE_S):
            raise StuckProducerError(
                f"send_offsets_to_transaction did not return in {SEND_OFFSETS_DEADLINE_S:.0f}s"
            )
        if failure:
            raise failure[0]

    def replace(self) -> None:
        """Swap in a new producer; its init_transactions fences and aborts the stuck one."""
        log.warning("transactional producer is stuck; replacing it (fences the old one)")
        # The stuck producer is kept referenced, never destroyed under its blocked thread.
        self._abandoned.append(self._producer)
        self.start()

    def commit(self) -> None:
        producer = self.producer
        deadline = time.monotonic() + self.settings.transaction_timeout_ms / 1000
        while True:
            try:
                producer.commit_transaction(COMMIT_TIMEOUT_S)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.retriable() and time.monotonic() < deadline:
                    log.warning("commit_transaction: %s; retrying", error.str())
                    time.sleep(0.5)
                    continue
                raise

    def abort(self) -> None:
        producer = self.producer
        self._on_abort()
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                producer.abort_transaction(COMMIT_TIMEOUT_S)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal():
                    raise FencedError(error.str()) from exc
                if error.code() == KafkaError._STATE:
                    return  # no transaction in progress
                log.warning("abort_transaction failed (attempt %d): %s", attempt, error.str())
                self.sleep_backoff(attempt)
        raise ProcessingError("could not abort the transaction; the broker is unreachable")

    def sleep_backoff(self, attempt: int) -> None:
        delay = min(
            self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** (attempt - 1)
        )
        self._stop.wait(delay * random.uniform(0.5, 1.0))

    def flush(self, timeout_s: float) -> None:
        if self._producer is not None:
            self._producer.flush(timeout_s)


def classify(exc: KafkaException, where: str) -> None:
    """Raise FencedError for a fenced producer, else RetryableError (always raises)."""
    error: KafkaError = exc.args[0]
    if error.fatal() or error.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ):
        raise FencedError(error.str()) from exc
    raise RetryableError(where, error.str()) from exc
