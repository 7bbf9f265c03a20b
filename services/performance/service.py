"""The performance service as it runs: its processor on the exactly-once loop.

Reads ``predictions`` (and ``predictions.shadow``) and ``labels``, co-partitioned by entity
id, plus its own internal ``performance.partials`` topic; writes ``performance`` and
``performance.alerts``. Any number of instances share the work: each joins the partitions
it owns, and the instance owning partition 0 merges every partition's partials into the
reports (docs/decisions/performance-scale-out.md). Inputs that are not co-partitioned are
a :class:`~streamml.errors.ConfigError` (exit 2).
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException

from services.performance.metrics import default_metrics
from services.performance.processor import PerformanceProcessor
from services.performance.settings import PerformanceSettings
from streamml.errors import ConfigError
from streamml.logs import fields
from streamml.runtime import StreamRuntime
from streamml.runtime.clients import make_admin
from streamml.service import tune_gc
from streamml.settings import KafkaSettings

log = logging.getLogger("services.performance")


def _partitions(kafka: KafkaSettings, topic: str) -> int:
    try:
        metadata = make_admin(kafka).list_topics(topic, timeout=30)
    except KafkaException as exc:
        raise ConfigError(f"cannot read metadata of {topic}: {exc}") from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ConfigError(f"input topic {topic} does not exist; create it first")
    return len(found.partitions)


def source_partitions(settings: PerformanceSettings) -> int:
    """Partitions of the inputs (from the settings or the broker); they must agree."""
    if settings.source_partitions:
        return settings.source_partitions
    kafka = settings.kafka
    predictions = kafka.topic(settings.predictions_topic)
    count = _partitions(kafka, predictions)
    labels = kafka.topic(settings.labels_topic)
    other = _partitions(kafka, labels)
    if other != count:  # the range assignor pairs partition p of both topics
        raise ConfigError(
            f"{labels} has {other} partitions but {predictions} has {count}; "
            "they must be co-partitioned (same count, same key)"
        )
    return count


def build(settings: PerformanceSettings) -> StreamRuntime:
    """The runtime of one performance instance, from its settings."""
    tune_gc(settings.gc_young_threshold)
    metrics = default_metrics()
    partitions = source_partitions(settings)
    processor = PerformanceProcessor.from_settings(
        settings, metrics=metrics, source_partitions=partitions
    )
    log.info("join and reports", extra=fields(
        label_horizon=str(settings.label_horizon),
        early_label_grace=str(settings.early_label_grace),
        report_interval=str(settings.report_interval),
        window=settings.window_kind,
        partitions=partitions,
    ))  # fmt: skip
    return StreamRuntime(
        service="performance",
        processor=processor,
        inputs=processor.input_schemas(),
        kafka=settings.kafka,
        settings=settings.runtime,
        http=settings.http,
    )
