"""Construction of the project's Kafka clients from the settings (one place for their config).

The runtime's loop, the services' side readers and writers and the operator commands all
build their clients here, so a librdkafka setting is chosen once: the transactional
producer and the group member of the loop, the restore reader, an assignment reader for
reading a log from the beginning (never committing), an acknowledged plain producer, the
admin client; and the names the runtime gives its consumer group and changelog topics.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from streamml.partitioner import PARTITIONER
from streamml.settings import KafkaSettings, RuntimeSettings


def group_id_of(service: str, kafka: KafkaSettings, settings: RuntimeSettings) -> str:
    """The consumer group of a service: the setting, or ``<prefix><service>``."""
    return settings.group_id or kafka.topic(service)


def changelog_topic(group_id: str, store: str) -> str:
    """The compacted topic that holds the changes of one state store of a group."""
    return f"{group_id}-{store}-changelog"


def make_admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(kafka.client_config())


# librdkafka retries a transactional request the coordinator refuses with
# CONCURRENT_TRANSACTIONS (the previous transaction still completing, or another request
# of the same one in flight) after retry.backoff.ms, 100 ms by default: one such refusal
# in four small transactions was the largest share of the end-to-end p99 at low rates
# (docs/decisions/runtime-transaction-latency.md). Other retries still back off
# exponentially from here up to retry.backoff.max.ms (1 s).
TRANSACTION_RETRY_BACKOFF_MS = 10


def make_producer(
    kafka: KafkaSettings, settings: RuntimeSettings, *, transactional_id: str, client_id: str
) -> Producer:
    """The transactional, idempotent producer of one instance."""
    config = {
        **kafka.client_config(),
        "transactional.id": transactional_id,
        "enable.idempotence": True,
        "transaction.timeout.ms": settings.transaction_timeout_ms,
        "linger.ms": 5,
        "retry.backoff.ms": TRANSACTION_RETRY_BACKOFF_MS,
        "queue.buffering.max.messages": settings.producer_queue_max_messages,
        "compression.type": "lz4",
        "client.id": client_id,
        "partitioner": PARTITIONER,
    }
    return Producer(config)


def make_consumer(
    kafka: KafkaSettings,
    settings: RuntimeSettings,
    *,
    group_id: str,
    client_id: str,
    on_error: Callable[[KafkaError], None] | None = None,
) -> Consumer:
    """The group member: ``read_committed``, no auto-commit, ``range`` assignor.

    ``on_error`` gets librdkafka's client-wide errors (all brokers down, authentication),
    which never arrive as records; it runs inside ``consume`` on the caller's thread.
    """
    config: dict[str, Any] = {
        **kafka.client_config(),
        "group.id": group_id,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "partition.assignment.strategy": "range",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(1000, settings.session_timeout_ms // 4),
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        "client.id": client_id,
        "fetch.queue.backoff.ms": settings.fetch_queue_backoff_ms,
    }
    if on_error is not None:
        config["error_cb"] = on_error
    return Consumer(config)


def make_restore_consumer(kafka: KafkaSettings, *, group_id: str) -> Consumer:
    """A consumer that reads changelog partitions by assignment (it never joins the group)."""
    return Consumer(
        {
            **kafka.client_config(),
            "group.id": f"{group_id}-restore",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": 52428800,
        }
    )


def make_reader(kafka: KafkaSettings, *, group_id: str | None = None, **extra: Any) -> Consumer:
    """A consumer that reads partitions by assignment: ``read_committed``, never commits.

    Its group id (unique unless given) is never used to commit, so reading creates or
    moves no consumer group. ``_PARTITION_EOF`` events say where a partition ends.
    ``extra`` adds librdkafka settings for one use.
    """
    config = {
        **kafka.client_config(),
        "group.id": group_id or f"streamml-reader-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        **extra,
    }
    return Consumer(config)


def make_acked_producer(kafka: KafkaSettings) -> Producer:
    """A plain (not transactional) idempotent producer whose writes all replicas ack."""
    return Producer({**kafka.client_config(), "enable.idempotence": True, "acks": "all",
                     "partitioner": PARTITIONER})  # fmt: skip
