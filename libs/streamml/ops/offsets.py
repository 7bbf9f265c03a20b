"""Show and reset a consumer group's committed offsets (to reprocess a range).

A reset is refused while the group has members: a running instance would overwrite the
new offsets with its own on its next commit. Kafka enforces the same rule (an admin
offset commit to a non-empty group fails), so a member that joins between the check and
the reset makes the reset fail rather than half-apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streamml.errors import BrokerError
from streamml.ops.common import (
    ADMIN_TIMEOUT_S,
    UsageError,
    admin_client,
    offset_for_time,
    partitions_of,
    reader,
    select_partitions,
    watermarks,
)
from streamml.settings import KafkaSettings

NO_OFFSET = -1


@dataclass(frozen=True, slots=True)
class ResetTarget:
    """Where to move the group: exactly one of the fields is set."""

    to_time: int | None = None
    to_offset: int | None = None
    to_earliest: bool = False
    to_latest: bool = False

    def check(self, partitions: Sequence[int]) -> None:
        """Refuse none, several, or a per-partition offset for many partitions."""
        chosen = sum(
            [self.to_time is not None, self.to_offset is not None, self.to_earliest, self.to_latest]
        )
        if chosen != 1:
            raise UsageError(
                "give exactly one of --to-time, --to-offset, --to-earliest, --to-latest"
            )
        if self.to_offset is not None:
            if len(partitions) != 1:
                raise UsageError(
                    "offsets are per partition: give exactly one --partition with --to-offset"
                )
            if self.to_offset < 0:
                raise UsageError(f"--to-offset must be >= 0 (got {self.to_offset})")


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """One partition of a group: committed offset before and after, and the log ends."""

    partition: int
    before: int
    after: int
    low: int
    high: int

    @property
    def lag_after(self) -> int:
        """Records the group will (re)process from ``after`` to the current end."""
        start = self.low if self.after < 0 else self.after
        return max(0, self.high - start)


def active_members(admin: AdminClient, group: str) -> list[str]:
    """Client ids and hosts of the group's current members (empty when none)."""
    try:
        future = admin.describe_consumer_groups([group], request_timeout=ADMIN_TIMEOUT_S)[group]
        description = future.result()
    except KafkaException as exc:
        raise BrokerError(f"cannot describe consumer group {group!r}: {exc}") from exc
    return [f"{m.client_id}@{m.host}" for m in description.members or ()]


def committed(
    admin: AdminClient, group: str, topic: str, partitions: Sequence[int]
) -> dict[int, int]:
    """The group's committed offset per partition (-1 when it has none)."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
    try:
        result = admin.list_consumer_group_offsets([request], request_timeout=ADMIN_TIMEOUT_S)
        found = result[group].result()
    except KafkaException as exc:
        raise BrokerError(f"cannot read offsets of group {group!r}: {exc}") from exc
    return {tp.partition: int(tp.offset) for tp in found.topic_partitions}


def plan_reset(
    kafka: KafkaSettings,
    group: str,
    topic: str,
    target: ResetTarget,
    partitions: Sequence[int] = (),
) -> list[PartitionOffsets]:
    """Before/after offsets per partition; changes nothing."""
    admin = admin_client(kafka)
    chosen = select_partitions(partitions_of(admin, topic), partitions, topic)
    target.check(partitions)
    before = committed(admin, group, topic, chosen)
    consumer = reader(kafka)
    rows = []
    try:
        for partition in chosen:
            low, high = watermarks(consumer, topic, partition)
            if target.to_earliest:
                after = low
            elif target.to_latest:
                after = high
            elif target.to_offset is not None:
                if not low <= target.to_offset <= high:
                    raise UsageError(
                        f"--to-offset {target.to_offset} is outside {topic}[{partition}] "
                        f"(offsets {low}..{high})"
                    )
                after = target.to_offset
            else:
                assert target.to_time is not None
                after = offset_for_time(consumer, topic, partition, target.to_time)
            rows.append(
                PartitionOffsets(partition, before.get(partition, NO_OFFSET), after, low, high)
            )
    finally:
        consumer.close()
    return rows


def show(kafka: KafkaSettings, group: str, topic: str) -> tuple[list[str], list[PartitionOffsets]]:
    """Members and committed offsets (``after`` = ``before``) of a group on a topic."""
    admin = admin_client(kafka)
    partitions = partitions_of(admin, topic)
    members = active_members(admin, group)
    current = committed(admin, group, topic, partitions)
    consumer = reader(kafka)
    rows = []
    try:
        for partition in partitions:
            low, high = watermarks(consumer, topic, partition)
            offset = current.get(partition, NO_OFFSET)
            rows.append(PartitionOffsets(partition, offset, offset, low, high))
    finally:
        consumer.close()
    return members, rows


def apply_reset(
    kafka: KafkaSettings, group: str, topic: str, rows: Sequence[PartitionOffsets]
) -> None:
    """Commit the planned offsets for the group; refuses while it has members."""
    admin = admin_client(kafka)
    members = active_members(admin, group)
    if members:
        raise UsageError(
            f"group {group!r} has {len(members)} active member(s) ({', '.join(members[:3])}); "
            "stop the service first, then reset"
        )
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, row.partition, row.after) for row in rows]
    )
    try:
        admin.alter_consumer_group_offsets([request], request_timeout=ADMIN_TIMEOUT_S)[
            group
        ].result()
    except KafkaException as exc:
        raise BrokerError(f"reset of group {group!r} failed, offsets unchanged: {exc}") from exc
