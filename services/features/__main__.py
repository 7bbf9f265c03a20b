"""``python -m services.features``: run the features service until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys

from services.features.processor import FeaturesProcessor, tune_gc
from services.features.settings import FeaturesSettings
from streamml.errors import ConfigError
from streamml.logs import configure_logging
from streamml.runtime import StreamRuntime
from streamml.settings import load_settings

SERVICE = "features"
log = logging.getLogger("services.features")


def main() -> None:
    try:
        settings = load_settings(FeaturesSettings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format, service=SERVICE)
    tune_gc(settings.gc_young_threshold)
    processor = FeaturesProcessor.from_settings(settings)
    fs = processor.feature_set
    log.info(
        "feature set %s v%s hash=%s features=%d lateness_ms=%d",
        fs.name, fs.version, fs.content_hash, len(fs.names), fs.allowed_lateness_ms,
    )  # fmt: skip
    kafka = settings.kafka
    try:
        runtime = StreamRuntime(
            service=SERVICE,
            processor=processor,
            inputs={kafka.topic(settings.input_topic): "Event"},
            kafka=kafka,
            settings=settings.runtime,
            http=settings.http,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(runtime.run())


if __name__ == "__main__":
    main()
