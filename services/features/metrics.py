"""Prometheus metrics of the features service (on top of the runtime's generic ones).

The runtime already counts records in/out and dead letters by reason; these add what
only the features logic knows: duplicates, which rule and field failed, late events,
feature freshness, time since the last event per partition, and the fail-stop circuit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streamml.metrics import BulkHistogram, process_default


class LastEventAge(Collector):
    """``streamml_features_seconds_since_last_event{partition}``, computed at scrape time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def touch(self, partition: int, now: float) -> None:
        self._last[partition] = now

    def forget(self, partition: int) -> None:
        with self._lock:
            self._last.pop(partition, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "streamml_features_seconds_since_last_event",
            "Wall-clock seconds since this instance last received an event on a partition.",
            labels=["partition"],
        )
        now = self._clock()
        with self._lock:
            items = sorted(self._last.items())
        for partition, last in items:
            family.add_metric([str(partition)], max(now - last, 0.0))
        yield family


class FeaturesMetrics:
    """The features core's metrics: duplicates, rule failures, lateness, feature age,
    time since the last event, dedup expiry and the fail-stop circuit.

    Built once by the service (:func:`default_metrics`) and handed to the processor; a
    test passes one on its own ``CollectorRegistry`` (see :mod:`streamml.metrics`).
    """

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.duplicates = Counter(
            "streamml_features_duplicates_total",
            "Events dropped because their event id was already turned into features, by "
            "source (live = upstream retry or double send; replay = operator replay or "
            "redrive headers).",
            ["source"],
            registry=registry,
        )
        self.validation_failures = Counter(
            "streamml_features_validation_failures_total",
            "Events dead-lettered by a data-quality rule, by reason and field.",
            ["reason", "field"],
            registry=registry,
        )
        self.late_events = Counter(
            "streamml_features_late_events_total",
            "Events older than their entity's watermark minus the allowed lateness "
            "(dead-lettered).",
            registry=registry,
        )
        self.feature_age = BulkHistogram(
            "streamml_features_feature_age_seconds",
            "Feature age at emit: computed_at minus the event's event_time.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86_400),
            registry=registry,
        )
        self.entity_history_capped = Counter(
            "streamml_features_entity_history_capped_total",
            "Events evicted early because one entity exceeded max_entity_events (its windows "
            "are approximate from then on).",
            registry=registry,
        )
        self.dedup_expired = Counter(
            "streamml_features_dedup_expired_total",
            "Dedup keys deleted because they fell out of the retention window (event time).",
            registry=registry,
        )
        self.circuit_state = Gauge(
            "streamml_features_circuit_state",
            "Fail-stop circuit: 0 closed (flowing), 1 open (halted), 2 half-open (probing).",
            registry=registry,
        )
        self.circuit_trips = Counter(
            "streamml_features_circuit_trips_total",
            "Times the fail-stop circuit opened because the invalid share passed the threshold.",
            registry=registry,
        )
        self.invalid_share = Gauge(
            "streamml_features_invalid_share",
            "Share of invalid records in the circuit's sliding window.",
            registry=registry,
        )
        self.last_event = LastEventAge(clock)
        registry.register(self.last_event)


# The process-wide metrics on the default registry (created once).
default_metrics = process_default(FeaturesMetrics)
