"""The asyncio reader, on aiokafka: the same behaviour as :class:`streamml.client.Reader`.

``isolation_level="read_committed"`` (records of aborted transactions are never delivered),
no auto-commit: a record counts as handled when the caller asks for the next one or calls
:meth:`AsyncReader.commit`, and handled offsets are committed before each new fetch and on
:meth:`AsyncReader.stop`. aiokafka is installed with its lz4 support (the services
compress with lz4).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Generic, Self

from streamml.client.records import ConsumedRecord, ValueDeserializer, ValueT, headers_of
from streamml.codec import AvroCodec
from streamml.errors import BrokerError, DecodeError
from streamml.settings import KafkaSettings

log = logging.getLogger(__name__)


class AsyncReader(Generic[ValueT]):
    """Typed records of one topic for asyncio code (logical name; the prefix is added).

    >>> from streamml.client import AsyncReader, Prediction
    >>> async def main() -> None:  # doctest: +SKIP
    ...     async with AsyncReader(Prediction, "predictions", group_id="case-manager") as r:
    ...         async for record in r:
    ...             print(record.value.entity_id, record.value.score)

    ``config``: extra ``AIOKafkaConsumer`` keyword arguments, applied last.
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
        kafka = kafka or KafkaSettings()
        self._topic = kafka.topic(topic)
        self._decode = ValueDeserializer(value_type, codec or AvroCodec.from_settings(kafka))
        self._consumer_args: dict[str, Any] = {
            **kafka.aiokafka_config(),
            "group_id": group_id,
            "isolation_level": "read_committed",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            **(config or {}),
        }
        self._consumer: Any = None
        self._handed_out: tuple[Any, int] | None = None  # (TopicPartition, offset)
        self._handled: dict[Any, int] = {}  # partition -> next offset to commit
        self._buffer: list[Any] = []

    @property
    def topic(self) -> str:
        """The physical topic name (prefix included)."""
        return self._topic

    async def start(self) -> None:
        """Connect and join the group."""
        from aiokafka import AIOKafkaConsumer  # lazy: only asyncio consumers need it

        self._consumer = AIOKafkaConsumer(self._topic, **self._consumer_args)
        await self._consumer.start()

    async def getone(self, timeout_s: float = 1.0) -> ConsumedRecord[ValueT] | None:
        """The next record, or None after ``timeout_s``; the previous one counts as handled.

        Raises DecodeError (with topic, partition, offset, raw bytes) for a value that is
        not one of ``value_type``; that record is then not counted as handled.
        """
        self._mark_handled()
        if not self._buffer:
            await self._commit_handled()
            batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000))
            self._buffer = [m for tp in sorted(batches, key=lambda t: t.partition)
                            for m in batches[tp]]  # fmt: skip
            self._buffer.reverse()  # pop() from the end gives them in order
        if not self._buffer:
            return None
        message = self._buffer.pop()
        try:
            if message.value is None:
                raise DecodeError("a record without a value (tombstone)", topic=message.topic)
            typed = self._decode(message.value, message.topic)
        except DecodeError as exc:
            exc.partition, exc.offset = message.partition, message.offset
            raise
        from aiokafka import TopicPartition

        self._handed_out = (TopicPartition(message.topic, message.partition), message.offset)
        return ConsumedRecord(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=message.timestamp,
            key=message.key,
            headers=headers_of(message.headers),
            value=typed,
        )

    def __aiter__(self) -> AsyncIterator[ConsumedRecord[ValueT]]:
        return self._records()

    async def _records(self) -> AsyncIterator[ConsumedRecord[ValueT]]:
        while self._consumer is not None:
            record = await self.getone(1.0)
            if record is not None:
                yield record

    async def commit(self) -> None:
        """The record handed out last counts as handled; commit every handled offset now."""
        self._mark_handled()
        await self._commit_handled()

    def pause(self) -> None:
        """Stop fetching from the assigned partitions until resume()."""
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        """Fetch again from the assigned partitions."""
        self._consumer.resume(*self._consumer.assignment())

    async def stop(self) -> None:
        """Commit the handled offsets and leave the group (the last record handed out is
        not counted as handled unless :meth:`commit` was awaited after it)."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                await self._commit_handled(consumer)
            finally:
                await consumer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _mark_handled(self) -> None:
        if self._handed_out is not None:
            partition, offset = self._handed_out
            self._handled[partition] = offset + 1
            self._handed_out = None

    async def _commit_handled(self, consumer: Any = None) -> None:
        if not self._handled:
            return
        from aiokafka.errors import CommitFailedError, KafkaError

        offsets, self._handled = self._handled, {}
        try:
            await (consumer or self._consumer).commit(offsets)
        except CommitFailedError as exc:  # rebalanced away: the new owner reads them again
            log.warning("commit failed", extra={"topic": self._topic, "error": str(exc)})
        except KafkaError as exc:
            raise BrokerError(f"commit on {self._topic}: {exc}") from exc
