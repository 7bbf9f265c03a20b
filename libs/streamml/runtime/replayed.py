"""Replayed records that fail again are not dead-lettered twice.

An operator replay (``streamml replay``) copies a range back into a topic with a
``replay.source`` header naming each record's original position. A record of that range
that was dead-lettered the first time fails again; a second dead letter of the same
record would break the runbook's check ("no new dead letters from the replay") and make a
later redrive send the record twice. So before the runtime dead-letters a replayed
record, it looks up whether ``<topic>.dlq`` already holds a dead letter of the same
origin, and if so only counts it.

The dead-letter topics are read lazily, only when a replayed record fails (rare), from
where the last look-up stopped, with a ``read_committed`` consumer that never joins a
group. A record redriven from the dead-letter topic is not a replay: failing again is the
next attempt of its dead letter (``dlq.attempt``), as before.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from streamml.deadletter import Origin, dead_letter_origin
from streamml.errors import BrokerUnavailableError
from streamml.runtime.clients import make_restore_consumer
from streamml.settings import KafkaSettings

log = logging.getLogger(__name__)


class DeadLetterOrigins:
    """The origins of the dead letters already in each dead-letter topic."""

    def __init__(self, kafka: KafkaSettings, *, group_id: str) -> None:
        self._kafka = kafka
        self._group_id = group_id
        self._origins: dict[str, set[Origin]] = defaultdict(set)
        self._next: dict[str, dict[int, int]] = defaultdict(dict)

    def holds(self, dlq_topic: str, origin: Origin) -> bool:
        """True when ``dlq_topic`` has a committed dead letter of ``origin``."""
        if origin not in self._origins[dlq_topic]:
            self._catch_up(dlq_topic)
        return origin in self._origins[dlq_topic]

    def _catch_up(self, dlq_topic: str) -> None:
        reader = make_restore_consumer(self._kafka, group_id=self._group_id)
        try:
            metadata = reader.list_topics(dlq_topic, timeout=10).topics.get(dlq_topic)
            if metadata is None or metadata.error is not None:
                return
            positions = self._next[dlq_topic]
            reader.assign(
                [
                    TopicPartition(dlq_topic, p, positions.get(p, OFFSET_BEGINNING))
                    for p in metadata.partitions
                ]
            )
            pending = set(metadata.partitions)
            while pending:
                for msg in reader.consume(1000, timeout=1.0):
                    error = msg.error()
                    partition: int = msg.partition()  # type: ignore[assignment]
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(partition)
                            continue
                        raise BrokerUnavailableError(f"reading {dlq_topic}: {error.str()}")
                    positions[partition] = msg.offset() + 1  # type: ignore[operator]
                    origin = dead_letter_origin(msg.headers() or [])  # type: ignore[arg-type]
                    if origin is not None:
                        self._origins[dlq_topic].add(origin)
        except KafkaException as exc:
            raise BrokerUnavailableError(f"reading {dlq_topic}: {exc}") from exc
        finally:
            reader.close()
