"""Shared pieces of the operator tools: argument parsing, Kafka clients, reading ranges.

Every error an operator can fix by changing the command line is a :class:`UsageError`
(a :class:`streamml.errors.ConfigError`); the CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from streamml.errors import BrokerError, ConfigError
from streamml.runtime.clients import make_admin, make_reader
from streamml.settings import KafkaSettings, load_settings

Headers = list[tuple[str, bytes]]

ADMIN_TIMEOUT_S = 15.0

_RELATIVE = re.compile(r"^-(\d+)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class UsageError(ConfigError):
    """A command-line argument is wrong or would make the command ambiguous or unsafe."""


def message_headers(message: Message) -> list[tuple[str, bytes]]:
    """A consumed record's headers as a list of (name, bytes) pairs, repeats kept."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [
        (name, value.encode() if isinstance(value, str) else (value or b""))
        for name, value in pairs
    ]


def message_offset(message: Message) -> int:
    """A consumed record's offset (always set on records, unlike on error events)."""
    offset = message.offset()
    if offset is None:
        raise BrokerError(f"record of {message.topic()} without offset")
    return int(offset)


def now_ms() -> int:
    """Wall-clock time in ms: operator commands stamp ``replay.at``/``redrive.at`` with it."""
    return int(time.time() * 1000)


def parse_time(text: str, *, now: int, option: str = "time") -> int:
    """A point in time as epoch milliseconds.

    Accepts ISO 8601 with a timezone (``2026-11-22T03:00:00Z``), epoch milliseconds
    (``1795375201344``), ``now``, or a relative time before now (``-90s``, ``-15m``,
    ``-2h``, ``-1d``). A time without timezone is refused, because the operator's and the
    broker's local times differ; a 10-digit number is refused because it looks like seconds.

    >>> parse_time("2026-11-22T03:00:00Z", now=0)
    1795316400000
    >>> parse_time("-1h", now=7_200_000)
    3600000
    """
    value = text.strip()
    if value == "now":
        return now
    relative = _RELATIVE.match(value)
    if relative:
        return now - int(relative.group(1)) * _UNIT_MS[relative.group(2)]
    if value.isdigit():
        if len(value) <= 11:
            raise UsageError(
                f"{option} {value!r} looks like epoch seconds; give epoch milliseconds "
                "or ISO 8601 with a timezone (e.g. 2026-11-22T03:00:00Z)"
            )
        return int(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{option} {value!r} is not a time; use ISO 8601 with a timezone "
            "(2026-11-22T03:00:00Z), epoch ms, 'now' or a relative time like -2h"
        ) from None
    if parsed.tzinfo is None:
        raise UsageError(f"{option} {value!r} has no timezone; add one, e.g. {value}Z for UTC")
    return int(parsed.timestamp() * 1000)


def format_ms(timestamp_ms: int | None) -> str:
    """An epoch-ms timestamp as ISO 8601 UTC with milliseconds, or '-'."""
    if timestamp_ms is None or timestamp_ms < 0:
        return "-"
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def header_text(value: bytes | None) -> str:
    """A header value for humans: UTF-8 when it is, hex otherwise."""
    if value is None:
        return ""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + value.hex()


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The last value of header ``name`` (Kafka allows repeats), or None."""
    found = None
    for key, value in headers or ():
        if key == name:
            found = value
    return found


def header_int(headers: Sequence[tuple[str, bytes]] | None, name: str) -> int | None:
    """An integer header (offsets, attempts, timestamps), or None when absent or garbled."""
    value = header(headers, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def new_operation_id() -> str:
    """A short unique id for one replay or redrive run."""
    return uuid.uuid4().hex[:12]


def kafka_settings(bootstrap: str | None, prefix: str | None) -> KafkaSettings:
    """KafkaSettings from the environment, with ``--bootstrap``/``--prefix`` on top."""
    overrides: dict[str, Any] = {}
    if bootstrap:
        overrides["bootstrap_servers"] = bootstrap
    if prefix is not None:
        overrides["topic_prefix"] = prefix
    kafka = load_settings(KafkaSettings, **overrides)
    if kafka.security_protocol != "PLAINTEXT":
        from streamml.startup import probe_credentials

        # A wrong password or CA is one line and exit 2, not librdkafka's "transport failure".
        probe_credentials(kafka, timeout_s=15.0)
    return kafka


def admin_client(kafka: KafkaSettings) -> AdminClient:
    """An AdminClient for the configured cluster."""
    return make_admin(kafka)


def reader(kafka: KafkaSettings, **extra: Any) -> Consumer:
    """A consumer for reading ranges by assignment: read_committed, never commits offsets.

    Its group id is unique and never used to commit, so reading does not create or move
    any consumer group.
    """
    # Ranges end where data ends; a short broker wait keeps each range read snappy.
    settings = {"fetch.wait.max.ms": 50, **extra}
    return make_reader(kafka, group_id=f"streamml-ops-reader-{uuid.uuid4().hex[:8]}", **settings)


def partitions_of(admin: AdminClient, topic: str) -> list[int]:
    """Partition numbers of ``topic``; a one-line error when it does not exist."""
    try:
        metadata = admin.list_topics(topic=topic, timeout=ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka to describe topic {topic!r}: {exc}") from exc
    found = metadata.topics.get(topic)
    error = None if found is None else found.error
    if error is not None and error.code() not in (
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
    ):
        raise BrokerError(f"topic {topic!r}: {error.str()}")
    if found is None or error is not None or not found.partitions:
        raise UsageError(f"topic {topic!r} does not exist (check the name and --prefix)")
    return sorted(found.partitions)


def select_partitions(
    available: Sequence[int], wanted: Sequence[int] | None, topic: str
) -> list[int]:
    """The partitions a command works on: all of them, or the ones given, which must exist."""
    if not wanted:
        return list(available)
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise UsageError(
            f"topic {topic!r} has partitions 0..{max(available)}; no partition {missing[0]}"
        )
    return sorted(set(wanted))


def watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    """(low, high) offsets of one partition, straight from the broker."""
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=ADMIN_TIMEOUT_S, cached=False
        )
    except KafkaException as exc:
        raise BrokerError(f"cannot read offsets of {topic}[{partition}]: {exc}") from exc
    return int(low), int(high)


def offset_for_time(consumer: Consumer, topic: str, partition: int, timestamp_ms: int) -> int:
    """The first offset whose record timestamp is >= ``timestamp_ms``; the end when none."""
    try:
        (found,) = consumer.offsets_for_times(
            [TopicPartition(topic, partition, timestamp_ms)], timeout=ADMIN_TIMEOUT_S
        )
    except KafkaException as exc:
        raise BrokerError(f"cannot look up offsets by time in {topic}[{partition}]: {exc}") from exc
    if found.error is not None:
        raise BrokerError(f"offsets_for_times on {topic}[{partition}]: {found.error}")
    if found.offset < 0:
        return watermarks(consumer, topic, partition)[1]
    return int(found.offset)


def read_range(
    consumer: Consumer,
    topic: str,
    partition: int,
    start: int,
    end: int,
    *,
    idle_timeout_s: float,
    batch: int = 500,
) -> Iterator[Message]:
    """Committed records of ``topic[partition]`` with ``start <= offset < end``, in order.

    Transaction markers and aborted records take offsets but are never returned, so the
    number of records can be less than ``end - start``. Stops with a BrokerError when
    nothing moves for ``idle_timeout_s`` (e.g. a transaction held open upstream).
    """
    if start >= end:
        return
    consumer.assign([TopicPartition(topic, partition, start)])
    last_progress = time.monotonic()
    next_offset = start
    try:
        while True:
            # consume() waits for the whole timeout unless it gets num_messages: ask for no
            # more than the range still holds, so the last batch returns at once.
            wanted = max(1, min(batch, end - next_offset))
            messages = consumer.consume(num_messages=wanted, timeout=0.1)
            if not messages:
                if time.monotonic() - last_progress > idle_timeout_s:
                    raise BrokerError(
                        f"no progress reading {topic}[{partition}] for {idle_timeout_s:.0f}s "
                        f"before offset {end} (is a transaction left open?)"
                    )
                continue
            last_progress = time.monotonic()
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        if (message.offset() or 0) >= end:
                            return
                        continue
                    raise BrokerError(f"reading {topic}[{partition}]: {error.str()}")
                offset = message.offset()
                if offset is None or offset >= end:
                    return
                next_offset = offset + 1
                yield message
                if offset >= end - 1:
                    return
    finally:
        consumer.unassign()


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of the operator log: what a replay or redrive already sent."""

    key: str
    value: dict[str, Any]


def read_log(
    kafka: KafkaSettings, log_topic: str, *, idle_timeout_s: float
) -> dict[str, dict[str, Any]]:
    """The operator log (compacted) as key -> latest JSON value; committed entries only."""
    admin = admin_client(kafka)
    partitions = partitions_of(admin, log_topic)
    consumer = reader(kafka)
    entries: dict[str, dict[str, Any]] = {}
    try:
        for partition in partitions:
            low, high = watermarks(consumer, log_topic, partition)
            for message in read_range(
                consumer, log_topic, partition, low, high, idle_timeout_s=idle_timeout_s
            ):
                key = (message.key() or b"").decode("utf-8", "replace")
                value = message.value()
                if value is None:
                    entries.pop(key, None)
                    continue
                try:
                    entries[key] = json.loads(value)
                except ValueError:
                    continue  # not ours: a foreign record in the log is ignored, not fatal
    finally:
        consumer.close()
    return entries


def encode_log_value(value: dict[str, Any]) -> bytes:
    """A log entry value: compact JSON."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of at most ``size`` items."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
