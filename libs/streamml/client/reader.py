"""The synchronous reader, on confluent-kafka (librdkafka).

Reads committed records only (``isolation.level=read_committed``: records of an aborted
transaction are never delivered) and commits a record's offset only after the caller has
handled it: a record counts as handled when the caller asks for the next one or calls
:meth:`Reader.commit`. Offsets handled so far are committed every few seconds
(``auto.commit.interval.ms``) and on :meth:`Reader.close`; a crash between handling and
commit means the record is delivered again (at least once), never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Generic, Self

from streamml.client.records import ConsumedRecord, ValueDeserializer, ValueT, headers_of
from streamml.codec import AvroCodec
from streamml.errors import BrokerError, DecodeError
from streamml.settings import KafkaSettings

log = logging.getLogger(__name__)


class Reader(Generic[ValueT]):
    """Typed records of one topic (logical name: the configured prefix is put before it).

    >>> from streamml.client import Prediction, Reader
    >>> with Reader(Prediction, "predictions", group_id="case-manager") as reader:  # doctest: +SKIP
    ...     for record in reader:
    ...         print(record.value.entity_id, record.value.score)

    ``kafka``: connection, prefix and registry (``STREAMML_KAFKA_*`` by default);
    ``codec``: a codec to decode with (default: from ``kafka``); ``config``: extra
    librdkafka consumer settings, applied last.
    """

    def __init__(
        self,
        value_type: type[ValueT],
        topic: str,
        *,
        group_id: str,
        kafka: KafkaSettings | None = None,
        codec: AvroCodec | None = None,
        from_beginning: bool = True,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        from confluent_kafka import Consumer

        kafka = kafka or KafkaSettings()
        self._topic = kafka.topic(topic)
        self._decode = ValueDeserializer(value_type, codec or AvroCodec.from_settings(kafka))
        consumer_config: dict[str, Any] = {
            **kafka.client_config(),
            "group.id": group_id,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            # Offsets are stored only for handled records; librdkafka commits stored ones.
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            **(config or {}),
        }
        self._consumer = Consumer(consumer_config)
        self._consumer.subscribe([self._topic])
        self._handled: Any = None  # the last delivered message, until it counts as handled
        self._closed = False

    @property
    def topic(self) -> str:
        """The physical topic name (prefix included)."""
        return self._topic

    def poll(self, timeout_s: float = 1.0) -> ConsumedRecord[ValueT] | None:
        """The next record, or None after ``timeout_s``; the previous one counts as handled.

        Raises DecodeError (with topic, partition, offset and raw bytes) for a value that
        is not one of ``value_type``; that record is then not counted as handled.
        """
        self._store_handled()
        while True:
            message = self._consumer.poll(timeout_s)
            if message is None:
                return None
            error = message.error()
            if error is None:
                break
            if error.fatal():
                raise BrokerError(f"consumer of {self._topic}: {error.str()}")
            log.warning("consumer error", extra={"topic": self._topic, "error": error.str()})
            return None
        topic, partition = message.topic() or self._topic, message.partition() or 0
        offset, value = message.offset() or 0, message.value()
        try:
            if value is None:
                raise DecodeError("a record without a value (tombstone)", topic=topic)
            typed = self._decode(value, topic)
        except DecodeError as exc:
            exc.partition, exc.offset = partition, offset
            raise
        self._handled = message
        return ConsumedRecord(
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp_ms=message.timestamp()[1],
            key=message.key(),
            headers=headers_of(message.headers()),
            value=typed,
        )

    def __iter__(self) -> Iterator[ConsumedRecord[ValueT]]:
        """Records as they come, forever (until :meth:`close` or the loop ends)."""
        while not self._closed:
            record = self.poll(1.0)
            if record is not None:
                yield record

    def commit(self) -> None:
        """The record handed out last counts as handled; commit every handled offset now."""
        self._store_handled()
        try:
            self._consumer.commit(asynchronous=False)
        except Exception as exc:  # KafkaException: nothing stored yet is not an error here
            if "NO_OFFSET" not in str(exc):
                raise BrokerError(f"commit on {self._topic}: {exc}") from exc

    def pause(self) -> None:
        """Stop fetching from the assigned partitions (polls return None) until resume()."""
        self._consumer.pause(self._consumer.assignment())

    def resume(self) -> None:
        """Fetch again from the assigned partitions."""
        self._consumer.resume(self._consumer.assignment())

    def close(self) -> None:
        """Commit the handled offsets and leave the group. The last record handed out is
        not counted as handled unless :meth:`commit` was called after it."""
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _store_handled(self) -> None:
        if self._handled is not None:
            self._consumer.store_offsets(message=self._handled)
            self._handled = None
