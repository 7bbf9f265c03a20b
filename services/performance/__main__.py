"""``python -m services.performance``: run the performance service until SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import logging
import sys

from services.performance.metrics import PerformanceMetrics
from services.performance.processor import PerformanceProcessor
from services.performance.settings import PerformanceSettings
from streamml.errors import ConfigError
from streamml.logs import configure_logging
from streamml.runtime import StreamRuntime
from streamml.settings import load_settings

SERVICE = "performance"
log = logging.getLogger("services.performance")


def tune_gc(young_threshold: int) -> None:
    """Collect young objects every ``young_threshold`` allocations (0: CPython's default).

    Every record allocates short-lived objects (decoded dicts, packed entries, tuples); at
    CPython's default threshold of 700 the collector runs every few records.
    """
    if young_threshold > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)


def main() -> None:
    try:
        settings = load_settings(PerformanceSettings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format, service=SERVICE)
    tune_gc(settings.gc_young_threshold)
    metrics = PerformanceMetrics()
    processor = PerformanceProcessor.from_settings(settings, metrics=metrics)
    log.info(
        "label_horizon=%s early_label_grace=%s report_interval=%s window=%s",
        settings.label_horizon, settings.early_label_grace, settings.report_interval,
        settings.window_kind,
    )  # fmt: skip
    try:
        runtime = StreamRuntime(
            service=SERVICE,
            processor=processor,
            inputs=processor.input_schemas(),
            kafka=settings.kafka,
            settings=settings.runtime,
            http=settings.http,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(runtime.run())


if __name__ == "__main__":
    main()
