"""Dead letters of labels that waited in state (orphans, and late copies of an early label).

A label rejected when it arrives is a :class:`~streamml.processor.Rejection`: the runtime
dead-letters its record. A label that waited in the join store is dead-lettered later, when
its record is long gone, in the runtime's one format (:func:`streamml.deadletter.dead_letter`)
from what the state kept of it: its key, value bytes and headers as read, so the dead letter
is the one the runtime would have written had the label been rejected on arrival. Another
label of the same event (a correction that waited with it) is re-encoded from its fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from services.performance.metrics import PerformanceMetrics
from services.performance.state_layout import Entry
from streamml.deadletter import dead_letter
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
        self.send(entry, len(entry.labels) - 1, reason="orphan",
                  message=f"no prediction for this event_id: {why}", outputs=outputs)  # fmt: skip

    def send(
        self, entry: Entry, index: int, *, reason: str, message: str, outputs: list[Output]
    ) -> None:
        """Dead-letter label ``index`` of ``entry``'s history (0: the record it kept)."""
        self._metrics.on_event(f"{reason}_label")
        origin = entry.origin
        assert origin is not None
        label, labeled_at, _ = entry.labels[index]
        value = {
            "event_id": origin.event_id,
            "entity_id": origin.entity_id,
            "label": label,
            "labeled_at": labeled_at,
            "source": origin.source,
        }
        source = origin if index == 0 else dataclasses.replace(origin, value=None)
        letter = dead_letter(
            source,
            reason=reason,
            message=f"event_id {origin.event_id}: {message}",
            service=SERVICE,
            stage=JOIN_STAGE,
            now_ms=int(self._clock() * 1000),
        )
        outputs.append(
            Output(topic=letter.topic, schema="Label", value=value, key=letter.key,
                   headers=tuple(letter.headers), raw_value=letter.value)
        )  # fmt: skip
