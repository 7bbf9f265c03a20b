"""The features service as it runs: its processor on the exactly-once loop."""

from __future__ import annotations

import logging

from services.features.processor import FeaturesProcessor
from services.features.settings import FeaturesSettings
from streamml.logs import fields
from streamml.runtime import StreamRuntime
from streamml.service import tune_gc

log = logging.getLogger("services.features")


def build(settings: FeaturesSettings) -> StreamRuntime:
    """The runtime of one features instance, from its settings."""
    tune_gc(settings.gc_young_threshold)
    processor = FeaturesProcessor.from_settings(settings)
    fs = processor.feature_set
    log.info("feature set", extra=fields(
        name=fs.name, version=fs.version, hash=fs.content_hash, features=len(fs.names),
        lateness_ms=fs.allowed_lateness_ms,
    ))  # fmt: skip
    kafka = settings.kafka
    return StreamRuntime(
        service="features",
        processor=processor,
        inputs={kafka.topic(settings.input_topic): "Event"},
        kafka=kafka,
        settings=settings.runtime,
        http=settings.http,
    )
