"""Provisioning and restore: the topics a service needs, and its state read back from changelogs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streamml.deadletter import dlq_topic
from streamml.errors import ProcessingError, StateStoreError
from streamml.logs import fields
from streamml.runtime.clients import make_admin, make_restore_consumer
from streamml.runtime.executor import Polled, TopicPartitionKey
from streamml.settings import KafkaSettings, RuntimeSettings
from streamml.startup import retry_transient
from streamml.state import State

log = logging.getLogger(__name__)

CHANGELOG_SEGMENT_MS = 600_000  # a changelog segment rolls (and may be compacted) after this

_REPORT_WAIT_AFTER_S = 2.0


def ensure_topics(
    kafka: KafkaSettings,
    settings: RuntimeSettings,
    inputs: Sequence[str],
    changelogs: Sequence[str],
) -> None:
    """Check the inputs exist; create missing changelogs and dead-letter topics.

    A dead letter sent to a topic that does not exist would fail its transaction again
    and again, so every input's ``.dlq`` is made sure of before the first record.
    """
    admin = make_admin(kafka)
    try:
        metadata = retry_transient(
            lambda: admin.list_topics(timeout=30), what="reading topic metadata"
        )
    except KafkaException as exc:
        admin.poll(0)  # hands librdkafka's queued lines (the cause) to the logging
        raise ProcessingError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}") from exc
    missing = [t for t in inputs if t not in metadata.topics]
    if missing:
        raise ProcessingError(
            f"input topic(s) {', '.join(missing)} do not exist; create them with "
            "`streamml topics create`"
        )
    partitions = max(len(metadata.topics[t].partitions) for t in inputs)
    for name in changelogs:
        if name in metadata.topics and len(metadata.topics[name].partitions) < partitions:
            raise ProcessingError(
                f"changelog {name} has {len(metadata.topics[name].partitions)} partitions "
                f"but the inputs have {partitions}; state cannot follow its partitions"
            )
    replicas = settings.changelog_replication_factor
    changelog_config = {
        "cleanup.policy": "compact",
        "min.cleanable.dirty.ratio": "0.1",
        "segment.ms": str(CHANGELOG_SEGMENT_MS),
        # Each segment rolls up to half a segment early, at random, so the changelogs of
        # services started together do not roll (and become dirty for the one cleaner
        # thread) in the same second (docs/decisions/changelog-segment-jitter.md).
        "segment.jitter.ms": str(CHANGELOG_SEGMENT_MS // 2),
    }
    new = [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=replicas,
            config=changelog_config,
        )
        for name in changelogs
        if name not in metadata.topics
    ]
    new += [
        NewTopic(
            dlq_topic(topic),
            num_partitions=len(metadata.topics[topic].partitions),
            replication_factor=replicas,
            config={"retention.ms": str(30 * 24 * 3600 * 1000)},
        )
        for topic in inputs
        if dlq_topic(topic) not in metadata.topics
    ]
    if not new:
        return
    for name, future in admin.create_topics(new).items():
        try:
            future.result()
            log.info("created topic", extra=fields(topic=name))
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ProcessingError(f"cannot create topic {name}: {exc}") from exc


def restore(
    numbers: Sequence[int],
    *,
    state: State,
    changelogs: Mapping[str, str],
    kafka: KafkaSettings,
    settings: RuntimeSettings,
    group_id: str,
    on_progress: Callable[[], None] = lambda: None,
    on_wait: Callable[[str], None] = lambda reason: None,
) -> None:
    """Load changelog partitions ``numbers`` of every store, up to their end.

    ``changelogs`` maps each store name to its changelog topic. ``on_progress`` is called
    whenever changelog records arrive (restore progress counts as life for liveness);
    ``on_wait`` with a reason when an open transaction holds the changelog's end back.
    """
    if not numbers or not changelogs:
        for number in numbers:
            for store in state.stores:
                store.assign(number)
        return
    from confluent_kafka import IsolationLevel
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

    admin = make_admin(kafka)
    tps = [TopicPartition(t, n) for t in changelogs.values() for n in numbers]
    # Wait until no transaction is open on the changelog partitions (last stable
    # offset == high watermark), so that reading to the end sees every committed write.
    started = time.monotonic()
    deadline = started + settings.transaction_timeout_ms / 1000
    while True:
        committed = list_offsets(admin, tps, IsolationLevel.READ_COMMITTED, OffsetSpec)
        latest = list_offsets(admin, tps, IsolationLevel.READ_UNCOMMITTED, OffsetSpec)
        if committed == latest or time.monotonic() > deadline:
            break
        if time.monotonic() - started > _REPORT_WAIT_AFTER_S:
            on_wait(
                "waiting for an open transaction on the state changelog to end before "
                "restoring (it times out after "
                f"transaction_timeout_ms={settings.transaction_timeout_ms})"
            )
        time.sleep(0.05)
    store_of = {topic: name for name, topic in changelogs.items()}
    for number in numbers:
        for store in state.stores:
            store.assign(number)
    todo = [tp for tp in tps if latest[(tp.topic, tp.partition)] > 0]
    if not todo:
        return
    restorer = make_restore_consumer(kafka, group_id=group_id)
    try:
        restorer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in todo])
        pending = {(tp.topic, tp.partition) for tp in todo}
        count = 0
        while pending:
            messages = restorer.consume(10_000, timeout=0.2)
            if messages:
                on_progress()  # records (or an end of partition) arrived: alive
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard((msg.topic(), msg.partition()))
                        continue
                    raise StateStoreError(f"restoring state: {error.str()}")
                polled = Polled.of(msg)
                store = state.store(store_of[polled.topic])
                store.restore(polled.partition, polled.key or b"", polled.value)
                count += 1
        log.info("restored %d changelog records for partitions %s", count, list(numbers))
    finally:
        restorer.close()


def list_offsets(
    admin: AdminClient, tps: Sequence[TopicPartition], isolation: Any, spec: Any
) -> dict[TopicPartitionKey, int]:
    """End offsets of ``tps``; retries while leadership of new partitions settles."""
    request = {tp: spec.latest() for tp in tps}

    def list_once() -> dict[TopicPartitionKey, int]:
        futures = admin.list_offsets(request, isolation_level=isolation, request_timeout=30)
        return {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}

    try:
        # A changelog created moments ago, or a fresh broker, may answer
        # NOT_LEADER_OR_FOLLOWER / LEADER_NOT_AVAILABLE (or librdkafka's _NOENT) for a while
        # without marking the error retriable(): streamml.startup knows which heal by waiting.
        return retry_transient(list_once, what="listing changelog offsets")
    except KafkaException as exc:
        raise ProcessingError(f"listing changelog offsets: {exc}") from exc
