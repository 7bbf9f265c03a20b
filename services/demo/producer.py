"""The demo's synthetic producer: card transactions at a steady rate, late labels,
duplicates, malformed records and an injected drift.

It runs in a thread of the demo process. Every valid event is sent once, and with
probability ``duplicate_share`` a second time right after (byte-identical, as a producer
retry would); with probability ``malformed_share`` a malformed record is sent instead of
nothing extra: half undecodable bytes, half a decodable event that breaks a validation rule
(negative amount). Labels are scheduled at ``event_time + label_delay_ms`` (times the plan's
``label_delay_scale``) and sent when
the producer's event-time clock passes that instant, so their delay is realistic in event
time and compressed in wall time (see :mod:`services.demo.plan`).
"""

from __future__ import annotations

import bisect
import heapq
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from services.demo.plan import DemoPlan
from services.demo.scenarios import Scenario
from streamml.partitioner import PARTITIONER
from streamml.synthetic import DEFAULT_START_MS, Drift, generate_events, label_record

log = logging.getLogger(__name__)


@dataclass
class ProducerStats:
    """What the producer sent, for the live view and the summary's checks."""

    valid_sent: int = 0
    duplicates_sent: int = 0
    undecodable_sent: int = 0
    invalid_sent: int = 0
    labels_sent: int = 0
    labels_pending: int = 0
    delivery_errors: int = 0
    event_time_ms: int = DEFAULT_START_MS
    drift_event_time_ms: int | None = None
    drift_wall_s: float | None = None
    started_wall: float = 0.0
    finished: bool = False
    valid_ids: set[str] = field(default_factory=set)
    # Event times of the valid events sent since the drift, in order (for "records after").
    post_drift_times: list[int] = field(default_factory=list)
    # (wall seconds since start, event time ms) samples: maps one clock onto the other.
    timeline: list[tuple[float, int]] = field(default_factory=list)

    @property
    def malformed_sent(self) -> int:
        return self.undecodable_sent + self.invalid_sent

    def records_after_drift_until(self, event_time_ms: int) -> int:
        """Valid drifted events sent with event time at or before ``event_time_ms``."""
        return bisect.bisect_right(self.post_drift_times, event_time_ms)


class SyntheticProducer(threading.Thread):
    """Sends the plan's events, duplicates, malformed records and labels to Kafka."""

    def __init__(
        self,
        plan: DemoPlan,
        kafka_config: dict[str, Any],
        codec: Any,
        scenario: Scenario | None = None,
    ) -> None:
        super().__init__(name="demo-producer", daemon=True)
        self.plan = plan
        self.scenario = scenario
        """A failure injected at the plan's drift point instead of the demo's drift."""
        self.stats = ProducerStats()
        self._codec = codec
        self._config = {
            **kafka_config,
            "enable.idempotence": True,
            "linger.ms": 20,
            "compression.type": "lz4",
            "partitioner": PARTITIONER,  # as the services': labels meet their predictions
        }
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._halt.set()

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.stats.delivery_errors += 1
            log.error("delivery failed: %s", err)

    def run(self) -> None:
        from confluent_kafka import Producer

        plan = self.plan
        producer = Producer(self._config)
        rng = random.Random(plan.seed + 1)
        label_rng = random.Random(plan.seed + 2)
        events_topic, labels_topic = plan.topic("events"), plan.topic("labels")
        pending: list[tuple[int, int, dict[str, Any]]] = []
        stats = self.stats
        stats.started_wall = time.monotonic()
        last_sample = -1.0
        scenario = self.scenario
        drift = Drift() if scenario is None else scenario.drift
        generator = generate_events(
            plan.n_events,
            seed=plan.seed,
            n_entities=plan.entities,
            rate_per_s=plan.event_rate_per_s,
            drift_at=plan.drift_index if drift is not None else None,
            drift=drift,
        )
        duplicate_share = plan.duplicate_share
        labels_flow = True
        try:
            for index, (generated, label) in enumerate(generator):
                if self._halt.is_set():
                    break
                self._pace(index)
                event: dict[str, Any] | None = generated
                if index >= plan.drift_index:
                    with self._lock:
                        if stats.drift_event_time_ms is None:
                            stats.drift_event_time_ms = int(generated["event_time"])
                            stats.drift_wall_s = time.monotonic() - stats.started_wall
                    if scenario is not None:
                        event = scenario.apply(generated, plan.partitions)
                        duplicate_share = scenario.duplicate_share or plan.duplicate_share
                        labels_flow = not scenario.labels_stop
                if event is None:  # the scenario dropped it (it never happened upstream)
                    stats.event_time_ms = int(generated["event_time"])
                    continue
                key = event["entity_id"].encode()
                value = self._codec.encode("Event", event, topic=events_topic)
                producer.produce(events_topic, value, key, on_delivery=self._on_delivery)
                with self._lock:
                    stats.valid_ids.add(event["event_id"])
                    stats.valid_sent += 1
                    stats.event_time_ms = int(event["event_time"])
                    if index >= plan.drift_index:
                        stats.post_drift_times.append(int(event["event_time"]))
                if rng.random() < duplicate_share:
                    producer.produce(events_topic, value, key, on_delivery=self._on_delivery)
                    stats.duplicates_sent += 1
                if rng.random() < plan.malformed_share:
                    self._send_malformed(producer, events_topic, event, rng)
                record = label_record(event, label, label_rng, plan.label_delay_scale)
                heapq.heappush(pending, (record["labeled_at"], index, record))
                while labels_flow and pending and pending[0][0] <= stats.event_time_ms:
                    _, _, due = heapq.heappop(pending)
                    producer.produce(
                        labels_topic,
                        self._codec.encode("Label", due, topic=labels_topic),
                        due["entity_id"].encode(),
                        on_delivery=self._on_delivery,
                    )
                    stats.labels_sent += 1
                stats.labels_pending = len(pending)
                producer.poll(0)
                elapsed = time.monotonic() - stats.started_wall
                if elapsed - last_sample >= 0.5:
                    stats.timeline.append((elapsed, stats.event_time_ms))
                    last_sample = elapsed
        finally:
            remaining = producer.flush(30)
            if remaining:
                stats.delivery_errors += remaining
                log.error("%d records not delivered at the end", remaining)
            stats.timeline.append((time.monotonic() - stats.started_wall, stats.event_time_ms))
            stats.finished = True

    def _pace(self, index: int) -> None:
        """Sleep until record ``index`` is due at the plan's steady rate."""
        due = self.stats.started_wall + index / self.plan.rate
        delay = due - time.monotonic()
        if delay > 0:
            self._halt.wait(delay)

    def _send_malformed(
        self, producer: Any, topic: str, event: dict[str, Any], rng: random.Random
    ) -> None:
        key = event["entity_id"].encode()
        if rng.random() < 0.5:
            garbage = b"\xc3\x01" + rng.randbytes(8) + b"not an avro body"
            producer.produce(topic, garbage, key, on_delivery=self._on_delivery)
            self.stats.undecodable_sent += 1
            return
        broken = {**event, "event_id": f"malformed-{self.stats.invalid_sent}"}
        broken["payload"] = {**event["payload"], "amount": -abs(event["payload"]["amount"])}
        value = self._codec.encode("Event", broken, topic=topic)
        producer.produce(topic, value, key, on_delivery=self._on_delivery)
        self.stats.invalid_sent += 1

    def valid_ids(self) -> set[str]:
        with self._lock:
            return set(self.stats.valid_ids)
