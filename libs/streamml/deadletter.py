"""Dead-letter records: the header names and how a dead letter is built from its source.

A dead letter is the source record byte-identical (key, value, original headers) plus
``dlq.*`` headers saying what went wrong, where and when. The operator tools read these
headers to group, inspect and redrive; redrive adds ``redrive.*`` headers, and a record
that fails again comes back with ``dlq.attempt`` one higher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

DLQ_SUFFIX = ".dlq"
PARKED_SUFFIX = ".parked"

H_ERROR_CLASS = "dlq.error.class"
H_ERROR_MESSAGE = "dlq.error.message"
H_SERVICE = "dlq.service"
H_STAGE = "dlq.stage"
H_SOURCE_TOPIC = "dlq.source.topic"
H_SOURCE_PARTITION = "dlq.source.partition"
H_SOURCE_OFFSET = "dlq.source.offset"
H_SOURCE_TIMESTAMP = "dlq.source.timestamp"
H_TIMESTAMP = "dlq.timestamp"
H_ATTEMPT = "dlq.attempt"

H_REDRIVE_ID = "redrive.id"
H_REDRIVE_ATTEMPT = "redrive.attempt"
H_REDRIVE_SOURCE = "redrive.source"
H_REDRIVE_AT = "redrive.at"

DLQ_HEADER_PREFIX = "dlq."
MAX_MESSAGE_CHARS = 1000


def dlq_topic(source_topic: str) -> str:
    """The dead-letter topic of ``source_topic``: ``events`` -> ``events.dlq``."""
    return source_topic + DLQ_SUFFIX


def attempt_of(headers: Sequence[tuple[str, bytes]]) -> int:
    """Which attempt a failure of this record is: 1, or one more than the redriven one."""
    for key, value in headers:
        if key == H_REDRIVE_ATTEMPT:
            try:
                return int(value) + 1
            except ValueError:
                return 1
    return 1


def dead_letter_headers(
    source_headers: Sequence[tuple[str, bytes]],
    *,
    error_class: str,
    message: str,
    service: str,
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    source_timestamp_ms: int,
    now_ms: int,
) -> list[tuple[str, bytes]]:
    """The headers of a dead letter: the source's own (without stale ``dlq.*``) + ``dlq.*``."""
    headers = [(k, v) for k, v in source_headers if not k.startswith(DLQ_HEADER_PREFIX)]
    headers += [
        (H_ERROR_CLASS, error_class.encode()),
        (H_ERROR_MESSAGE, message[:MAX_MESSAGE_CHARS].encode("utf-8", "replace")),
        (H_SERVICE, service.encode()),
        (H_STAGE, stage.encode()),
        (H_SOURCE_TOPIC, topic.encode()),
        (H_SOURCE_PARTITION, str(partition).encode()),
        (H_SOURCE_OFFSET, str(offset).encode()),
        (H_SOURCE_TIMESTAMP, str(source_timestamp_ms).encode()),
        (H_TIMESTAMP, str(now_ms).encode()),
        (H_ATTEMPT, str(attempt_of(source_headers)).encode()),
    ]
    return headers


class DeadLetterSource(Protocol):
    """The record a dead letter stands for: where it was read, and its bytes as read."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A dead letter ready to produce: the source's key and value, the ``dlq.*`` headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter(
    source: DeadLetterSource,
    *,
    reason: str,
    message: str,
    service: str,
    stage: str,
    now_ms: int,
) -> DeadLetterRecord:
    """The one dead-letter format: ``source`` byte-identical to ``<topic>.dlq``, with headers
    saying what went wrong (``reason`` is the error class), where and when."""
    headers = dead_letter_headers(
        source.headers,
        error_class=reason,
        message=message,
        service=service,
        stage=stage,
        topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        source_timestamp_ms=source.timestamp_ms,
        now_ms=now_ms,
    )
    return DeadLetterRecord(dlq_topic(source.topic), source.key, source.value, headers)


H_REPLAY_SOURCE = "replay.source"  # set by `streamml replay`: "<topic>/<partition>/<offset>"

Origin = tuple[str, int, int]


def replay_origin(headers: Sequence[tuple[str, bytes]]) -> Origin | None:
    """Where a replayed record first came from (its first ``replay.source``), else None.

    A redriven record (``redrive.*`` headers) is not a replay: failing again is a new
    attempt of its dead letter, which the redrive tools count and park.
    """
    origin: Origin | None = None
    for key, value in headers:
        if key.startswith("redrive."):
            return None
        if key == H_REPLAY_SOURCE and origin is None:
            origin = _parse_source(value)
    return origin


def dead_letter_origin(headers: Sequence[tuple[str, bytes]]) -> Origin | None:
    """The record a dead letter stands for: its replay origin, else its ``dlq.source.*``."""
    replayed = replay_origin(headers)
    if replayed is not None:
        return replayed
    found = {k: v for k, v in headers if k in (H_SOURCE_TOPIC, H_SOURCE_PARTITION, H_SOURCE_OFFSET)}
    try:
        return (
            found[H_SOURCE_TOPIC].decode(),
            int(found[H_SOURCE_PARTITION]),
            int(found[H_SOURCE_OFFSET]),
        )
    except (KeyError, ValueError):
        return None


def _parse_source(value: bytes) -> Origin | None:
    topic, _, rest = value.decode("utf-8", "replace").rpartition("/")
    topic, _, partition = topic.rpartition("/")
    try:
        return (topic, int(partition), int(rest))
    except ValueError:
        return None
