"""Prometheus metrics of the performance service: quality gauges and join outcome counters.

Label cardinality is bounded: models x routes x (1 + segment fields x (segment_max_values +
1)) x 2 windows x metrics, and label sets a boundary no longer reports (a retired model
version, a segment value that left the top-K) are removed at the next boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from services.performance.quality import METRIC_NAMES
from streamml.metrics import process_default

_REPORTED = (*METRIC_NAMES, "label_coverage", "label_delay_p50_ms", "label_delay_p90_ms")
_COUNTS = ("predictions", "labeled", "corrections")


class PerformanceMetrics:
    """What the performance core records: report values as gauges (``observe``), join
    outcomes (``on_event``) and each input stream's event time (``on_watermark``).

    The service wiring builds one and hands it to the processor; a test passes its own
    (on a fresh ``CollectorRegistry``) to read what was recorded.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ["model", "version", "route", "window", "segment_field", "segment_value"]
        self.quality = Gauge(
            "streamml_performance_quality",
            "Live model quality at the last report boundary (NaN when undefined).",
            [*labels, "metric"],
            registry=registry,
        )
        self.counts = Gauge(
            "streamml_performance_window_records",
            "Predictions, labeled predictions and corrections in the report's window.",
            [*labels, "kind"],
            registry=registry,
        )
        self.boundary = Gauge(
            "streamml_performance_report_boundary_seconds",
            "Event time (epoch seconds) of the last report boundary the watermark passed.",
            registry=registry,
        )
        self.stream_time = Gauge(
            "streamml_performance_stream_event_time_seconds",
            "Largest event time read per input topic and partition; the service watermark is "
            "the smallest of these (minus allowed_lateness), so the lowest one is what holds "
            "reports back.",
            ["topic", "partition"],
            registry=registry,
        )
        self.events = Counter(
            "streamml_performance_join_events_total",
            "Join outcomes other than a plain join: duplicates, corrections, late and orphan "
            "labels, late predictions, predictions expired without a label.",
            ["kind"],
            registry=registry,
        )
        self._end: int | None = None
        # The gauge children of each reported label set, looked up once (``labels()`` costs
        # ~1.5 us, 12 per report); dropped with the label set in _rotate.
        self._children: dict[tuple[str, ...], tuple[list[Any], list[Any]]] = {}
        self._current: set[tuple[str, ...]] = set()
        self._previous: set[tuple[str, ...]] = set()

    def on_watermark(self, partition: int, topic: str, event_time_ms: int) -> None:
        """The largest event time read so far on ``topic``'s ``partition``."""
        self.stream_time.labels(topic, str(partition)).set(event_time_ms / 1000)

    def on_restored_boundary(self, end_ms: int) -> None:
        """The last reported boundary, read back from the committed state (after a restart
        or a rebalance: another instance may have reported since this one did)."""
        self.boundary.set(end_ms / 1000)

    def on_event(self, kind: str) -> None:
        """One join outcome of ``kind`` (``duplicate_label``, ``orphan_label``, ...)."""
        self.events.labels(kind).inc()

    def observe(self, report: Mapping[str, Any]) -> None:
        """A PerformanceReport value just emitted: its quality and counts as gauges."""
        end = int(report["window_end"])
        if end != self._end:
            self._rotate()
            self._end = end
            self.boundary.set(end / 1000)
        base = (
            str(report["model_name"]),
            str(report["model_version"]),
            str(report["route"]),
            str(report["window"]),
            str(report.get("segment_field") or ""),
            str(report.get("segment_value") or ""),
        )
        self._current.add(base)
        children = self._children.get(base)
        if children is None:
            children = self._children[base] = (
                [self.quality.labels(*base, name) for name in _REPORTED],
                [self.counts.labels(*base, name) for name in _COUNTS],
            )
        for name, gauge in zip(_REPORTED, children[0], strict=True):
            value = report.get(name)
            gauge.set(float("nan") if value is None else value)
        for name, gauge in zip(_COUNTS, children[1], strict=True):
            gauge.set(report.get(name) or 0)

    def _rotate(self) -> None:
        for base in self._previous - self._current:
            self._children.pop(base, None)
            for name in _REPORTED:
                self.quality.remove(*base, name)
            for name in _COUNTS:
                self.counts.remove(*base, name)
        self._previous, self._current = self._current, set()


# The process-wide metrics on the default registry (created once).
default_metrics = process_default(PerformanceMetrics)
