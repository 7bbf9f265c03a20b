"""Dead letters of labels that waited in state (orphans, and late copies of an early label).

A label rejected when it arrives is a :class:`~streamml.processor.Rejection`: the runtime
dead-letters its record. A label that waited in the join store is dead-lettered later, when
its record is long gone; it is rebuilt from what the state kept and sent as an output.
"""

from __future__ import annotations

from collections.abc import Callable

from services.performance.metrics import PerformanceMetrics
from services.performance.state_layout import Entry
from streamml.deadletter import dead_letter_headers, dlq_topic
from streamml.processor import Output

SERVICE = "performance"
JOIN_STAGE = "join"


class WaitingLabelDeadLetters:
    """Builds the dead letter of a label that waited in the join store."""

    def __init__(self, *, clock: Callable[[], float], metrics: PerformanceMetrics) -> None:
        self._clock = clock
        self._metrics = metrics

    def orphan(self, entry: Entry, why: str, outputs: list[Output]) -> None:
        """The entry's latest label found no prediction."""
        label, labeled_at, _ = entry.labels[-1]
        self.send(entry, label, labeled_at, reason="orphan",
                  message=f"no prediction for this event_id: {why}", outputs=outputs)  # fmt: skip

    def send(
        self,
        entry: Entry,
        label: int,
        labeled_at: int,
        *,
        reason: str,
        message: str,
        outputs: list[Output],
    ) -> None:
        """Dead-letter one label of ``entry`` (re-encoded from what the state kept, not
        copied byte for byte: its record is from an earlier batch)."""
        self._metrics.on_event(f"{reason}_label")
        origin = entry.origin
        assert origin is not None
        value = {
            "event_id": origin.event_id,
            "entity_id": origin.entity_id,
            "label": label,
            "labeled_at": labeled_at,
            "source": origin.source,
        }
        headers = dead_letter_headers(
            [],
            error_class=reason,
            message=f"event_id {origin.event_id}: {message}",
            service=SERVICE,
            stage=JOIN_STAGE,
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            source_timestamp_ms=origin.timestamp_ms,
            now_ms=int(self._clock() * 1000),
        )
        outputs.append(
            Output(topic=dlq_topic(origin.topic), schema="Label", value=value,
                   key=origin.entity_id.encode(), headers=tuple(headers))
        )  # fmt: skip
