"""Tail: follow a topic and print each record as one JSON line, its value decoded from Avro.

Uses aiokafka (an async consumer fits a command that mostly waits), with no consumer
group: it assigns the partitions itself, so tailing never moves any group's offsets.
Reads committed records only, like the services. The runtime and the demo producer
compress with lz4, which aiokafka reads only with its ``lz4`` extra (a dependency of the
project); a codec still missing is one line naming it, not a traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamml.errors import BrokerError
from streamml.ops.decoding import (
    ValueDecoder,
    decode_value,
    headers_for_json,
    hex_preview,
    jsonable,
    key_text,
)
from streamml.settings import KafkaSettings


@dataclass(frozen=True, slots=True)
class TailOptions:
    """What to follow and when to stop."""

    topic: str
    partitions: tuple[int, ...] = ()
    from_beginning: bool = False
    max_records: int | None = None
    idle_exit_s: float | None = None


def record_line(
    codec: ValueDecoder | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
) -> str:
    """One record as a JSON line: where it is, key, headers, schema and decoded value."""
    decoded = decode_value(codec, value, topic)
    line: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": timestamp_ms,
        "key": key_text(key),
        "headers": headers_for_json(headers),
        "schema": decoded.schema,
        "value": jsonable(decoded.value),
    }
    if decoded.error is not None:
        line["error"] = decoded.error
        line["value_hex"] = hex_preview(value)
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


async def follow(
    kafka: KafkaSettings,
    options: TailOptions,
    codec: ValueDecoder | None,
    emit: Callable[[str], None],
    partitions: Sequence[int],
) -> int:
    """Print records of ``options.topic`` until ``max_records`` or idle; returns the count."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # only tail needs it
    from aiokafka.errors import UnsupportedCodecError

    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **kafka.aiokafka_config(),
    )
    await consumer.start()
    printed = 0
    try:
        assigned = [TopicPartition(options.topic, p) for p in partitions]
        consumer.assign(assigned)
        if options.from_beginning:
            await consumer.seek_to_beginning(*assigned)
        else:
            await consumer.seek_to_end(*assigned)
        while options.max_records is None or printed < options.max_records:
            timeout_ms = int((options.idle_exit_s or 1.0) * 1000)
            try:
                batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=500)
            except UnsupportedCodecError as exc:  # e.g. aiokafka installed without its lz4 extra
                raise BrokerError(
                    f"cannot read {options.topic}: {exc}; reinstall streamml (it installs "
                    "aiokafka[lz4]) or add the codec's aiokafka extra"
                ) from exc
            if not batches:
                if options.idle_exit_s is not None:
                    break
                continue
            # Per-partition order is what matters; partitions are printed one after another.
            records = [m for tp in sorted(batches, key=lambda t: t.partition) for m in batches[tp]]
            for message in records:
                emit(
                    record_line(
                        codec,
                        topic=message.topic,
                        partition=message.partition,
                        offset=message.offset,
                        timestamp_ms=message.timestamp,
                        key=message.key,
                        value=message.value,
                        headers=list(message.headers or ()),
                    )
                )
                printed += 1
                if options.max_records is not None and printed >= options.max_records:
                    break
    finally:
        await consumer.stop()
    return printed


def run_tail(
    kafka: KafkaSettings,
    options: TailOptions,
    codec: ValueDecoder | None,
    emit: Callable[[str], None],
    partitions: Sequence[int],
) -> int:
    """Blocking wrapper around :func:`follow` (Ctrl-C stops it cleanly)."""
    return asyncio.run(follow(kafka, options, codec, emit, partitions))
