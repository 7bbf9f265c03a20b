"""Replay: copy a range of a topic (by offsets or by time) into a target topic.

Ranges are half-open everywhere: ``--from-offset`` / ``--from-time`` are included,
``--to-offset`` / ``--to-time`` are excluded. A time range becomes the offset range
``[first offset with timestamp >= from, first offset with timestamp >= to)`` (Kafka's
``offsets_for_times``) and, inside it, only records with ``from <= timestamp < to`` are
copied, so a record stamped exactly at ``from`` is copied and one stamped exactly at
``to`` is not. The end of the range is fixed when the plan is made, so replaying a topic
into itself terminates.

Copies are byte-identical (key, value, original headers, timestamp) plus ``replay.id``,
``replay.source`` (``topic/partition/offset``) and ``replay.at``. When the target has as
many partitions as the source, each record goes to the partition it came from.

Delivery: transactional. Each chunk of copied records and the replay's progress entry in
the operator log commit in one transaction, so ``--resume <id>`` after a crash continues
exactly after the last committed chunk: nothing is copied twice and nothing is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from streamml.errors import StreamMLError
from streamml.ops.common import (
    UsageError,
    admin_client,
    encode_log_value,
    message_headers,
    message_offset,
    new_operation_id,
    now_ms,
    offset_for_time,
    partitions_of,
    read_log,
    read_range,
    reader,
    select_partitions,
    watermarks,
)
from streamml.ops.settings import OpsSettings
from streamml.ops.txn import OutRecord, TransactionalWriter
from streamml.settings import KafkaSettings

H_REPLAY_ID = "replay.id"
H_REPLAY_SOURCE = "replay.source"
H_REPLAY_AT = "replay.at"

LOG_KEY_PREFIX = "replay/"


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """What the operator asked for, before it is resolved against the broker."""

    from_offset: int | None = None
    to_offset: int | None = None
    from_time: int | None = None
    to_time: int | None = None
    partitions: tuple[int, ...] = ()


def check_range(request: RangeRequest) -> None:
    """Refuse a range that is missing, mixed, ambiguous or empty (before touching Kafka).

    >>> check_range(RangeRequest(from_time=0, to_time=10))
    >>> check_range(RangeRequest(from_offset=5))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamml.ops.common.UsageError: offsets are per partition: give exactly one --partition...
    """
    by_offset = request.from_offset is not None or request.to_offset is not None
    by_time = request.from_time is not None or request.to_time is not None
    if by_offset and by_time:
        raise UsageError("give either an offset range or a time range, not both")
    if not by_offset and not by_time:
        raise UsageError(
            "give a range: --from-offset [--to-offset] with one --partition, "
            "or --from-time [--to-time]"
        )
    if by_offset:
        if request.from_offset is None:
            raise UsageError("--to-offset needs --from-offset (the first offset to copy)")
        if len(request.partitions) != 1:
            raise UsageError(
                "offsets are per partition: give exactly one --partition with "
                "--from-offset/--to-offset"
            )
        if request.from_offset < 0:
            raise UsageError(f"--from-offset must be >= 0 (got {request.from_offset})")
        if request.to_offset is not None and request.to_offset <= request.from_offset:
            raise UsageError(
                f"empty range: --to-offset {request.to_offset} must be greater than "
                f"--from-offset {request.from_offset} (--to-offset is excluded)"
            )
    else:
        if request.from_time is None:
            raise UsageError("--to-time needs --from-time (the first time to copy)")
        if request.to_time is not None and request.to_time <= request.from_time:
            raise UsageError(
                "empty range: --to-time must be later than --from-time (--to-time is excluded)"
            )


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one source partition."""

    partition: int
    start: int
    end: int


@dataclass(slots=True)
class ReplayPlan:
    """A resolved replay: fixed offsets per partition, persisted in the operator log."""

    replay_id: str
    source: str
    target: str
    ranges: list[PartitionRange]
    from_time: int | None = None
    to_time: int | None = None
    pin_partitions: bool = True
    progress: dict[int, int] = field(default_factory=dict)
    copied: int = 0
    done: bool = False

    @property
    def total_offsets(self) -> int:
        """Offsets still to walk over (an upper bound of records: markers take offsets too)."""
        return sum(r.end - self.progress.get(r.partition, r.start) for r in self.ranges)

    def in_time_range(self, timestamp_ms: int) -> bool:
        """Whether a record with this timestamp is copied (always true for offset ranges)."""
        if self.from_time is not None and timestamp_ms < self.from_time:
            return False
        return not (self.to_time is not None and timestamp_ms >= self.to_time)

    def to_log(self) -> dict[str, Any]:
        """The plan and its progress as an operator-log value."""
        return {
            "kind": "replay",
            "id": self.replay_id,
            "source": self.source,
            "target": self.target,
            "ranges": [[r.partition, r.start, r.end] for r in self.ranges],
            "from_time": self.from_time,
            "to_time": self.to_time,
            "pin_partitions": self.pin_partitions,
            "progress": {str(p): o for p, o in self.progress.items()},
            "copied": self.copied,
            "done": self.done,
            "updated_at": now_ms(),
        }

    @classmethod
    def from_log(cls, value: dict[str, Any]) -> ReplayPlan:
        """The plan back from its operator-log value."""
        return cls(
            replay_id=str(value["id"]),
            source=str(value["source"]),
            target=str(value["target"]),
            ranges=[PartitionRange(int(p), int(s), int(e)) for p, s, e in value["ranges"]],
            from_time=value.get("from_time"),
            to_time=value.get("to_time"),
            pin_partitions=bool(value.get("pin_partitions", True)),
            progress={int(p): int(o) for p, o in value.get("progress", {}).items()},
            copied=int(value.get("copied", 0)),
            done=bool(value.get("done", False)),
        )


def log_key(replay_id: str) -> bytes:
    """The operator-log key of a replay."""
    return f"{LOG_KEY_PREFIX}{replay_id}".encode()


def make_plan(kafka: KafkaSettings, source: str, target: str, request: RangeRequest) -> ReplayPlan:
    """Resolve ``request`` against the broker into fixed offsets; refuse empty ranges."""
    check_range(request)
    admin = admin_client(kafka)
    available = partitions_of(admin, source)
    target_partitions = partitions_of(admin, target)
    partitions = select_partitions(available, request.partitions, source)
    consumer = reader(kafka)
    ranges: list[PartitionRange] = []
    try:
        for partition in partitions:
            low, high = watermarks(consumer, source, partition)
            if request.from_offset is not None:
                start = request.from_offset
                end = high if request.to_offset is None else request.to_offset
                if start < low:
                    raise UsageError(
                        f"--from-offset {start} is below the earliest offset still in "
                        f"{source}[{partition}] ({low}); older records were deleted"
                    )
                if end > high:
                    raise UsageError(
                        f"--to-offset {end} is beyond the end of {source}[{partition}] ({high})"
                    )
            else:
                assert request.from_time is not None
                start = offset_for_time(consumer, source, partition, request.from_time)
                end = (
                    high
                    if request.to_time is None
                    else offset_for_time(consumer, source, partition, request.to_time)
                )
            if start < end:
                ranges.append(PartitionRange(partition, start, end))
    finally:
        consumer.close()
    if not ranges:
        raise UsageError(f"empty range: no records of {source} fall inside it; nothing to replay")
    return ReplayPlan(
        replay_id=new_operation_id(),
        source=source,
        target=target,
        ranges=ranges,
        from_time=request.from_time,
        to_time=request.to_time,
        pin_partitions=len(target_partitions) == len(available),
    )


@dataclass(slots=True)
class PartitionSummary:
    """What a replay copies (dry run) or copied from one partition."""

    partition: int
    records: int = 0
    skipped: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    first_time: int | None = None
    last_time: int | None = None

    def add(self, offset: int, timestamp_ms: int) -> None:
        """Count one copied record."""
        self.records += 1
        if self.first_offset is None:
            self.first_offset, self.first_time = offset, timestamp_ms
        self.last_offset, self.last_time = offset, timestamp_ms


def _timestamp(message: Message) -> int:
    kind, value = message.timestamp()
    return -1 if kind == TIMESTAMP_NOT_AVAILABLE else int(value)


def survey(kafka: KafkaSettings, plan: ReplayPlan, ops: OpsSettings) -> list[PartitionSummary]:
    """Dry run: read the planned ranges and count what would be copied. Writes nothing."""
    summaries = []
    consumer = reader(kafka)
    try:
        for part in plan.ranges:
            summary = PartitionSummary(part.partition)
            for message in read_range(
                consumer,
                plan.source,
                part.partition,
                part.start,
                part.end,
                idle_timeout_s=ops.idle_timeout_s,
            ):
                timestamp = _timestamp(message)
                if plan.in_time_range(timestamp):
                    summary.add(message_offset(message), timestamp)
                else:
                    summary.skipped += 1
            summaries.append(summary)
    finally:
        consumer.close()
    return summaries


def start(kafka: KafkaSettings, plan: ReplayPlan, ops: OpsSettings) -> TransactionalWriter:
    """Record the plan in the operator log (so it can be resumed) and return the writer."""
    writer = TransactionalWriter(kafka, f"streamml-ops-replay-{plan.replay_id}")
    log_topic = kafka.topic(ops.log_topic)
    partitions_of(admin_client(kafka), log_topic)
    writer.write([OutRecord(log_topic, log_key(plan.replay_id), encode_log_value(plan.to_log()))])
    return writer


def load_plan(kafka: KafkaSettings, replay_id: str, ops: OpsSettings) -> ReplayPlan:
    """A replay's plan and progress from the operator log (for ``--resume``)."""
    entries = read_log(kafka, kafka.topic(ops.log_topic), idle_timeout_s=ops.idle_timeout_s)
    value = entries.get(log_key(replay_id).decode())
    if value is None:
        raise UsageError(
            f"no replay {replay_id!r} in {kafka.topic(ops.log_topic)}; "
            "nothing was copied by it, so start a new replay"
        )
    return ReplayPlan.from_log(value)


class RateLimiter:
    """Paces a loop to at most ``rate`` items per second (0 = unlimited)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._started = clock()
        self._count = 0

    def delay(self) -> float:
        """Seconds to wait before the next item."""
        self._count += 1
        if self._rate <= 0:
            return 0.0
        due = self._started + self._count / self._rate
        return max(0.0, due - self._clock())

    def wait(self) -> None:
        """Sleep until the next item is due."""
        pause = self.delay()
        if pause > 0:
            time.sleep(pause)


def replay_headers(
    original: Sequence[tuple[str, bytes]] | None,
    plan: ReplayPlan,
    offset: int,
    partition: int,
    at_ms: int,
) -> list[tuple[str, bytes]]:
    """The original headers, untouched, followed by the ``replay.*`` headers."""
    return [
        *(original or ()),
        (H_REPLAY_ID, plan.replay_id.encode()),
        (H_REPLAY_SOURCE, f"{plan.source}/{partition}/{offset}".encode()),
        (H_REPLAY_AT, str(at_ms).encode()),
    ]


def execute(
    kafka: KafkaSettings,
    plan: ReplayPlan,
    ops: OpsSettings,
    writer: TransactionalWriter,
    *,
    rate: float = 0.0,
    on_progress: Callable[[int, int], None] = lambda offsets, copied: None,
) -> list[PartitionSummary]:
    """Copy the rest of the plan, one transaction per chunk with its progress entry.

    ``on_progress(offsets_walked, records_copied)`` is called after every record.
    """
    log_topic = kafka.topic(ops.log_topic)
    limiter = RateLimiter(rate)
    consumer = reader(kafka)
    summaries = []
    try:
        for part in plan.ranges:
            summary = PartitionSummary(part.partition)
            begin = plan.progress.get(part.partition, part.start)
            chunk: list[OutRecord] = []
            position = begin
            for message in read_range(
                consumer,
                plan.source,
                part.partition,
                begin,
                part.end,
                idle_timeout_s=ops.idle_timeout_s,
            ):
                offset = message_offset(message)
                timestamp = _timestamp(message)
                on_progress(offset + 1 - position, 0)
                position = offset + 1
                if not plan.in_time_range(timestamp):
                    summary.skipped += 1
                    continue
                limiter.wait()
                chunk.append(
                    OutRecord(
                        topic=plan.target,
                        key=message.key(),
                        value=message.value(),
                        headers=replay_headers(
                            message_headers(message), plan, offset, part.partition, now_ms()
                        ),
                        partition=part.partition if plan.pin_partitions else None,
                        timestamp_ms=timestamp if timestamp >= 0 else None,
                    )
                )
                summary.add(offset, timestamp)
                on_progress(0, 1)
                if len(chunk) >= ops.chunk_records:
                    _commit_chunk(
                        writer=writer,
                        plan=plan,
                        log_topic=log_topic,
                        chunk=chunk,
                        partition=part.partition,
                        next_offset=position,
                    )
                    chunk = []
            # The range end is committed as progress even when its last offsets were markers.
            _commit_chunk(
                writer=writer,
                plan=plan,
                log_topic=log_topic,
                chunk=chunk,
                partition=part.partition,
                next_offset=part.end,
            )
            on_progress(part.end - position, 0)
            summaries.append(summary)
        plan.done = True
        writer.write(
            [OutRecord(log_topic, log_key(plan.replay_id), encode_log_value(plan.to_log()))]
        )
    finally:
        consumer.close()
        writer.close()
    return summaries


def _commit_chunk(
    *,
    writer: TransactionalWriter,
    plan: ReplayPlan,
    log_topic: str,
    chunk: list[OutRecord],
    partition: int,
    next_offset: int,
) -> None:
    plan.progress[partition] = next_offset
    plan.copied += len(chunk)
    entry = OutRecord(log_topic, log_key(plan.replay_id), encode_log_value(plan.to_log()))
    try:
        writer.write([*chunk, entry])
    except StreamMLError:
        plan.copied -= len(chunk)
        raise
