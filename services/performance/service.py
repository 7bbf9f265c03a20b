"""The performance service as it runs: its processor on the exactly-once loop."""

from __future__ import annotations

import logging

from services.performance.metrics import default_metrics
from services.performance.processor import PerformanceProcessor
from services.performance.settings import PerformanceSettings
from streamml.logs import fields
from streamml.runtime import StreamRuntime
from streamml.service import tune_gc

log = logging.getLogger("services.performance")


def build(settings: PerformanceSettings) -> StreamRuntime:
    """The runtime of one performance instance, from its settings."""
    tune_gc(settings.gc_young_threshold)
    metrics = default_metrics()
    processor = PerformanceProcessor.from_settings(settings, metrics=metrics)
    log.info("join and reports", extra=fields(
        label_horizon=str(settings.label_horizon),
        early_label_grace=str(settings.early_label_grace),
        report_interval=str(settings.report_interval),
        window=settings.window_kind,
    ))  # fmt: skip
    return StreamRuntime(
        service="performance",
        processor=processor,
        inputs=processor.input_schemas(),
        kafka=settings.kafka,
        settings=settings.runtime,
        http=settings.http,
    )
