"""A transactional producer for operator commands: records and their log entry commit together.

``replay`` and ``dlq redrive`` write each chunk of copied records and the operator-log entry
that says "this much is done" in one Kafka transaction. A crash therefore leaves either
both or neither; re-running continues exactly after the last committed chunk. The
transactional.id is stable per operation, so a re-run fences a zombie of the crashed run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from streamml.errors import BrokerError
from streamml.partitioner import PARTITIONER
from streamml.settings import KafkaSettings

TXN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to write: bytes as they are, optional pinned partition and timestamp."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    partition: int | None = None
    timestamp_ms: int | None = None


def _retriable(exc: BaseException) -> bool:
    if not isinstance(exc, KafkaException):
        return False
    error = exc.args[0] if exc.args else None
    return bool(error is not None and hasattr(error, "retriable") and error.retriable())


class TransactionalWriter:
    """Writes lists of records atomically with one transactional producer."""

    def __init__(self, kafka: KafkaSettings, transactional_id: str) -> None:
        config = kafka.client_config() | {
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "transaction.timeout.ms": 60_000,
            "partitioner": PARTITIONER,
        }
        self._producer = Producer(config)
        try:
            self._init()
        except KafkaException as exc:
            raise BrokerError(f"cannot start transactional producer: {exc}") from exc

    @retry(
        retry=retry_if_exception(_retriable),
        stop=stop_after_attempt(5),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    )
    def _init(self) -> None:
        self._producer.init_transactions(TXN_TIMEOUT_S)

    @retry(
        retry=retry_if_exception(_retriable),
        stop=stop_after_attempt(5),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    )
    def _commit(self) -> None:
        self._producer.commit_transaction(TXN_TIMEOUT_S)

    def write(self, records: Sequence[OutRecord]) -> None:
        """Produce ``records`` in one transaction; all are visible afterwards or none."""
        try:
            self._producer.begin_transaction()
            for record in records:
                kwargs: dict[str, Any] = {
                    "key": record.key,
                    "value": record.value,
                    "headers": list(record.headers),
                }
                if record.partition is not None:
                    kwargs["partition"] = record.partition
                if record.timestamp_ms is not None:
                    kwargs["timestamp"] = record.timestamp_ms
                self._produce(record.topic, kwargs)
            self._commit()
        except KafkaException as exc:
            self._abort_quietly()
            raise BrokerError(
                f"transaction failed, nothing of this chunk was written: {exc}"
            ) from exc

    def _produce(self, topic: str, kwargs: dict[str, Any]) -> None:
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                # Local queue full: let deliveries drain, then try again (backpressure).
                self._producer.poll(0.1)

    def _abort_quietly(self) -> None:
        # If the abort fails the transaction times out on the broker; the next init fences it.
        with contextlib.suppress(KafkaException):
            self._producer.abort_transaction(TXN_TIMEOUT_S)

    def close(self) -> None:
        """Flush what is left (nothing, after a commit) and release the producer."""
        self._producer.flush(5)
