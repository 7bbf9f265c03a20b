"""Dead letters: list them grouped, show them decoded, and redrive them after a fix.

Redrive sends a dead letter back to its source topic (the DLQ name without ``.dlq``)
byte-identical: key, value, the original headers (without ``dlq.*`` and stale
``redrive.*``) and the original timestamp, into the partition it came from, plus
``redrive.id``, ``redrive.attempt`` (the dead letter's ``dlq.attempt``), ``redrive.source``
(``dlq topic/partition/offset``) and ``redrive.at``. If it fails again, the runtime
dead-letters it with ``dlq.attempt = redrive.attempt + 1``. A dead letter whose attempt
reached the maximum is parked in ``<dlq>.parked`` instead: nothing loops forever.

Idempotent: every dead letter sent or parked gets an entry in the compacted operator log
keyed ``redrive/<dlq topic>/<partition>/<offset>``, written in the same transaction as the
record itself, and redrive skips dead letters that already have one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from streamml.deadletter import (
    DLQ_HEADER_PREFIX,
    DLQ_SUFFIX,
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_REDRIVE_AT,
    H_REDRIVE_ATTEMPT,
    H_REDRIVE_ID,
    H_REDRIVE_SOURCE,
    H_SERVICE,
    H_SOURCE_PARTITION,
    H_SOURCE_TIMESTAMP,
    H_STAGE,
    H_TIMESTAMP,
    PARKED_SUFFIX,
)
from streamml.ops.common import (
    UsageError,
    admin_client,
    chunked,
    encode_log_value,
    header,
    header_int,
    header_text,
    message_headers,
    message_offset,
    new_operation_id,
    now_ms,
    partitions_of,
    read_log,
    read_range,
    reader,
    select_partitions,
    watermarks,
)
from streamml.ops.settings import OpsSettings
from streamml.ops.txn import OutRecord, TransactionalWriter
from streamml.processor import REDRIVE_HEADER_PREFIX
from streamml.settings import KafkaSettings

H_PARKED_AT = "parked.at"
H_PARKED_BY = "parked.by"
LOG_KEY_PREFIX = "redrive/"
UNKNOWN = "?"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a dead-letter topic and what its ``dlq.*`` headers say."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def error_class(self) -> str:
        """The ``dlq.error.class`` header (``?`` when missing)."""
        return header_text(header(self.headers, H_ERROR_CLASS)) or UNKNOWN

    @property
    def error_message(self) -> str:
        """The ``dlq.error.message`` header."""
        return header_text(header(self.headers, H_ERROR_MESSAGE))

    @property
    def service(self) -> str:
        """The service that dead-lettered the record."""
        return header_text(header(self.headers, H_SERVICE)) or UNKNOWN

    @property
    def stage(self) -> str:
        """Where in the service it failed (decode, validate, process, ...)."""
        return header_text(header(self.headers, H_STAGE)) or UNKNOWN

    @property
    def attempt(self) -> int:
        """How many times this record has failed (``dlq.attempt``; 1 when missing)."""
        return header_int(self.headers, H_ATTEMPT) or 1

    @property
    def dead_at(self) -> int:
        """When it was dead-lettered (``dlq.timestamp``, else the record timestamp)."""
        found = header_int(self.headers, H_TIMESTAMP)
        return self.timestamp_ms if found is None else found

    @property
    def source_partition(self) -> int | None:
        """The partition of the source topic it came from."""
        return header_int(self.headers, H_SOURCE_PARTITION)

    @property
    def source_timestamp(self) -> int | None:
        """The timestamp the source record had."""
        return header_int(self.headers, H_SOURCE_TIMESTAMP)

    @property
    def log_key(self) -> str:
        """Its key in the operator log."""
        return f"{LOG_KEY_PREFIX}{self.topic}/{self.partition}/{self.offset}"

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The source record's own headers: without ``dlq.*`` and earlier ``redrive.*``."""
        return [
            (k, v)
            for k, v in self.headers
            if not k.startswith(DLQ_HEADER_PREFIX) and not k.startswith(REDRIVE_HEADER_PREFIX)
        ]


def source_topic_of(dlq: str) -> str:
    """The topic a dead-letter topic belongs to: ``prod.events.dlq`` -> ``prod.events``."""
    if not dlq.endswith(DLQ_SUFFIX) or len(dlq) == len(DLQ_SUFFIX):
        raise UsageError(f"{dlq!r} is not a dead-letter topic (its name must end in {DLQ_SUFFIX})")
    return dlq[: -len(DLQ_SUFFIX)]


def read_dead_letters(
    kafka: KafkaSettings,
    dlq: str,
    ops: OpsSettings,
    *,
    partitions: Sequence[int] = (),
    from_offset: int | None = None,
    to_offset: int | None = None,
) -> Iterator[DeadLetter]:
    """Every committed dead letter of ``dlq`` up to its end when called."""
    source_topic_of(dlq)
    available = partitions_of(admin_client(kafka), dlq)
    chosen = select_partitions(available, partitions, dlq)
    consumer = reader(kafka)
    try:
        for partition in chosen:
            low, high = watermarks(consumer, dlq, partition)
            start = max(low, from_offset or 0)
            end = high if to_offset is None else min(high, to_offset)
            for message in read_range(
                consumer, dlq, partition, start, end, idle_timeout_s=ops.idle_timeout_s
            ):
                yield DeadLetter(
                    topic=dlq,
                    partition=partition,
                    offset=message_offset(message),
                    timestamp_ms=int(message.timestamp()[1]),
                    key=message.key(),
                    value=message.value(),
                    headers=tuple(message_headers(message)),
                )
    finally:
        consumer.close()


@dataclass(slots=True)
class DeadLetterGroup:
    """Dead letters with the same error class, service and stage."""

    error_class: str
    service: str
    stage: str
    count: int = 0
    pending: int = 0
    first_time: int | None = None
    last_time: int | None = None
    max_attempt: int = 0
    example_message: str = ""


def group_dead_letters(
    letters: Iterable[DeadLetter], handled: set[str] | frozenset[str] = frozenset()
) -> list[DeadLetterGroup]:
    """Group by (error class, service, stage), biggest group first; ``pending`` = not yet
    redriven or parked (its log key is not in ``handled``)."""
    groups: dict[tuple[str, str, str], DeadLetterGroup] = {}
    for letter in letters:
        ident = (letter.error_class, letter.service, letter.stage)
        group = groups.get(ident)
        if group is None:
            group = groups[ident] = DeadLetterGroup(*ident, example_message=letter.error_message)
        group.count += 1
        if letter.log_key not in handled:
            group.pending += 1
        at = letter.dead_at
        group.first_time = at if group.first_time is None else min(group.first_time, at)
        group.last_time = at if group.last_time is None else max(group.last_time, at)
        group.max_attempt = max(group.max_attempt, letter.attempt)
    return sorted(groups.values(), key=lambda g: (-g.count, g.error_class, g.service, g.stage))


@dataclass(frozen=True, slots=True)
class RedriveFilter:
    """Which dead letters to redrive. Empty fields match everything.

    Times are compared with ``dlq.timestamp`` (when the record was dead-lettered), half-open:
    ``from_time <= t < to_time``. Offsets are DLQ offsets, half-open, one partition.
    """

    error_classes: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    from_time: int | None = None
    to_time: int | None = None
    partitions: tuple[int, ...] = ()
    from_offset: int | None = None
    to_offset: int | None = None

    def check(self) -> None:
        """Refuse empty or ambiguous filters."""
        if (
            self.from_time is not None
            and self.to_time is not None
            and self.to_time <= self.from_time
        ):
            raise UsageError("empty range: --to-time must be later than --from-time")
        if self.from_offset is not None or self.to_offset is not None:
            if len(self.partitions) != 1:
                raise UsageError(
                    "offsets are per partition: give exactly one --partition with "
                    "--from-offset/--to-offset"
                )
            low = self.from_offset or 0
            if low < 0:
                raise UsageError(f"--from-offset must be >= 0 (got {low})")
            if self.to_offset is not None and self.to_offset <= low:
                raise UsageError(
                    f"empty range: --to-offset {self.to_offset} must be greater than "
                    f"--from-offset {low} (--to-offset is excluded)"
                )

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` passes every filter."""
        if self.error_classes and letter.error_class not in self.error_classes:
            return False
        if self.services and letter.service not in self.services:
            return False
        at = letter.dead_at
        if self.from_time is not None and at < self.from_time:
            return False
        return not (self.to_time is not None and at >= self.to_time)


@dataclass(slots=True)
class RedrivePlan:
    """What one redrive run does."""

    redrive_id: str
    dlq: str
    send: list[DeadLetter] = field(default_factory=list)
    park: list[DeadLetter] = field(default_factory=list)
    already_handled: int = 0
    not_matching: int = 0


def plan_redrive(
    letters: Iterable[DeadLetter],
    selection: RedriveFilter,
    handled: set[str] | frozenset[str],
    *,
    max_attempts: int,
    redrive_id: str,
    dlq: str,
) -> RedrivePlan:
    """Split dead letters into: send back, park (attempts used up), skip (done or filtered)."""
    plan = RedrivePlan(redrive_id=redrive_id, dlq=dlq)
    for letter in letters:
        if not selection.matches(letter):
            plan.not_matching += 1
        elif letter.log_key in handled:
            plan.already_handled += 1
        elif letter.attempt >= max_attempts:
            plan.park.append(letter)
        else:
            plan.send.append(letter)
    return plan


def redriven_record(
    letter: DeadLetter, target: str, target_partitions: int, redrive_id: str, at_ms: int
) -> OutRecord:
    """The record that goes back to the source topic."""
    partition = letter.source_partition
    if partition is not None and not 0 <= partition < target_partitions:
        partition = None
    return OutRecord(
        topic=target,
        key=letter.key,
        value=letter.value,
        headers=[
            *letter.original_headers(),
            (H_REDRIVE_ID, redrive_id.encode()),
            (H_REDRIVE_ATTEMPT, str(letter.attempt).encode()),
            (H_REDRIVE_SOURCE, f"{letter.topic}/{letter.partition}/{letter.offset}".encode()),
            (H_REDRIVE_AT, str(at_ms).encode()),
        ],
        partition=partition,
        timestamp_ms=letter.source_timestamp,
    )


def parked_record(letter: DeadLetter, redrive_id: str, at_ms: int) -> OutRecord:
    """The dead letter as it is, plus when and by which run it was parked."""
    return OutRecord(
        topic=letter.topic + PARKED_SUFFIX,
        key=letter.key,
        value=letter.value,
        headers=[
            *letter.headers,
            (H_PARKED_AT, str(at_ms).encode()),
            (H_PARKED_BY, redrive_id.encode()),
        ],
        partition=letter.partition,
        timestamp_ms=letter.timestamp_ms,
    )


def prepare_redrive(
    kafka: KafkaSettings,
    dlq: str,
    selection: RedriveFilter,
    ops: OpsSettings,
    *,
    max_attempts: int,
) -> RedrivePlan:
    """Read the DLQ and the operator log and decide what a redrive run would do."""
    selection.check()
    source_topic_of(dlq)
    handled = set(read_log(kafka, kafka.topic(ops.log_topic), idle_timeout_s=ops.idle_timeout_s))
    letters = read_dead_letters(
        kafka,
        dlq,
        ops,
        partitions=selection.partitions,
        from_offset=selection.from_offset,
        to_offset=selection.to_offset,
    )
    return plan_redrive(
        letters,
        selection,
        handled,
        max_attempts=max_attempts,
        redrive_id=new_operation_id(),
        dlq=dlq,
    )


def execute_redrive(kafka: KafkaSettings, plan: RedrivePlan, ops: OpsSettings) -> tuple[int, int]:
    """Send and park as planned, each chunk with its log entries in one transaction.

    Returns (sent, parked).
    """
    target = source_topic_of(plan.dlq)
    admin = admin_client(kafka)
    target_partitions = len(partitions_of(admin, target))
    log_topic = kafka.topic(ops.log_topic)
    partitions_of(admin, log_topic)
    if plan.park:
        partitions_of(admin, plan.dlq + PARKED_SUFFIX)
    # One transactional.id per DLQ: starting the writer fences any other redrive of this DLQ
    # (its open transaction is aborted, its next commit fails). Reading the log only *after*
    # that sees every chunk the other run committed, so no dead letter is sent twice even
    # when two operators redrive at the same moment.
    writer = TransactionalWriter(kafka, f"streamml-ops-redrive-{plan.dlq}")
    handled = set(read_log(kafka, log_topic, idle_timeout_s=ops.idle_timeout_s))
    actions = [(d, "sent") for d in plan.send if d.log_key not in handled]
    actions += [(d, "parked") for d in plan.park if d.log_key not in handled]
    sent = parked = 0
    try:
        for chunk in chunked(actions, ops.chunk_records):
            at = now_ms()
            records: list[OutRecord] = []
            for letter, action in chunk:
                if action == "sent":
                    records.append(
                        redriven_record(letter, target, target_partitions, plan.redrive_id, at)
                    )
                else:
                    records.append(parked_record(letter, plan.redrive_id, at))
                records.append(
                    OutRecord(
                        log_topic,
                        letter.log_key.encode(),
                        encode_log_value(
                            {
                                "kind": "redrive",
                                "action": action,
                                "id": plan.redrive_id,
                                "attempt": letter.attempt,
                                "at": at,
                            }
                        ),
                    )
                )
            writer.write(records)
            sent += sum(1 for _, action in chunk if action == "sent")
            parked += sum(1 for _, action in chunk if action == "parked")
    finally:
        writer.close()
    return sent, parked
