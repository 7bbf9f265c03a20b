"""Prometheus metrics of the drift service (default registry, low-cardinality labels).

``feature`` labels are bounded by the reference (the model's inputs, ``score``,
``decision`` and the categorical attributes), never by data values.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from streamml.metrics import process_default


class DriftMetrics:
    """Statistic gauges, alert counters and bookkeeping counters."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.statistic = Gauge(
            "streamml_drift_statistic",
            "Last value of a window test per feature (psi, ks D, missing_rate, positive_rate).",
            ["feature", "test"],
            registry=registry,
        )
        self.alerts = Counter(
            "streamml_drift_alerts_total",
            "DriftAlert records emitted, by feature, episode state and severity.",
            ["feature", "state", "severity"],
            registry=registry,
        )
        self.partition_lag = Gauge(
            "streamml_drift_partition_lag_windows",
            "Windows a source partition is behind the newest partition of its stream "
            "(freshness: stale_partition fires at tests.stale_windows).",
            ["stream", "partition"],
            registry=registry,
        )
        self.open_episodes = Gauge(
            "streamml_drift_open_episodes",
            "Alert episodes currently open.",
            registry=registry,
        )
        self.detections = Counter(
            "streamml_drift_detections_total",
            "Streaming detector firings (per partition, before episode aggregation).",
            ["feature", "detector"],
            registry=registry,
        )
        self.records = Counter(
            "streamml_drift_records_total",
            "Input records by stream and outcome (monitored; replayed: counted in windows of "
            "their own event time; replay_duplicate: a replayed original already counted; "
            "replay_skipped; other_model; before_monitor_from: earlier than monitor_from_ms).",
            ["stream", "outcome"],
            registry=registry,
        )
        self.windows_closed = Counter(
            "streamml_drift_windows_closed_total",
            "Merged windows tested against the reference (a carried window is tested with "
            "the window it was carried into).",
            registry=registry,
        )
        self.replay_windows_sent = Counter(
            "streamml_drift_replay_windows_sent_total",
            "Windows of replayed records (counted apart from the live windows, in windows of "
            "their own event time) sent to the episode stage, per partition.",
            registry=registry,
        )
        self.replay_windows_tested = Counter(
            "streamml_drift_replay_windows_tested_total",
            "Merged windows of replayed records tested against the reference.",
            registry=registry,
        )
        self.windows_carried = Counter(
            "streamml_drift_windows_carried_total",
            "Merged windows with too few records to test alone (min_window_records): their "
            "counts are carried into the next window, which is tested with them.",
            ["stream"],
            registry=registry,
        )
        self.late_reports = Counter(
            "streamml_drift_late_reports_total",
            "Window reports that arrived after their window was closed (not tested).",
            registry=registry,
        )
        self.warming_signals = Counter(
            "streamml_drift_warming_signals_total",
            "Signals on history features before their warm-up ended (the stream's start plus "
            "the feature's window, from the reference): no episode is opened on them.",
            registry=registry,
        )
        self.state_resets = Counter(
            "streamml_drift_state_resets_total",
            "State blobs not loaded (signature, reference or detector parameters changed).",
            ["reason"],
            registry=registry,
        )


# The process-wide metrics on the default registry (created once).
default_metrics = process_default(DriftMetrics)
