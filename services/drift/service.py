"""The drift service as it runs: the reference, the co-partitioned inputs, the loop.

Reads ``features`` and ``predictions`` (co-partitioned) plus its own internal
``drift.windows`` topic, writes ``drift.alerts``. A wrong setting or reference, or inputs
that are not co-partitioned, is a :class:`~streamml.errors.ConfigError` (exit 2).
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException

from services.drift.processor import DriftProcessor
from services.drift.reference import Reference, load_reference
from services.drift.settings import DEV_STATE_KEY, DriftSettings
from streamml.errors import ConfigError
from streamml.logs import fields
from streamml.runtime import StreamRuntime
from streamml.runtime.clients import make_admin
from streamml.settings import KafkaSettings
from streamml.startup import preflight

log = logging.getLogger("services.drift")


def _partitions(kafka: KafkaSettings, topic: str) -> int:
    try:
        metadata = make_admin(kafka).list_topics(topic, timeout=30)
    except KafkaException as exc:
        raise ConfigError(f"cannot read metadata of {topic}: {exc}") from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ConfigError(f"input topic {topic} does not exist; create it first")
    return len(found.partitions)


def build_processor(
    settings: DriftSettings, reference: Reference, partitions: int
) -> DriftProcessor:
    """The processor as the service runs it (benchmarks build it here too)."""
    kafka = settings.kafka
    return DriftProcessor(
        reference=reference,
        features_topic=kafka.topic(settings.features_topic),
        predictions_topic=(
            kafka.topic(settings.predictions_topic) if settings.monitor_predictions else None
        ),
        windows_topic=kafka.topic(settings.windows_topic),
        alerts_topic=kafka.topic(settings.alerts_topic),
        state_key=settings.state_key.get_secret_value().encode(),
        source_partitions=partitions,
        window_ms=settings.window_ms,
        detectors=settings.detectors,
        feature_detectors=settings.feature_detectors,
        tests=settings.tests,
        replayed=settings.replayed,
        predictions_route=settings.predictions_route,
        monitor_from_ms=settings.monitor_from_ms,
        max_window_jump=settings.max_window_jump,
        jump_confirm_records=settings.jump_confirm_records,
    )


def build(settings: DriftSettings) -> StreamRuntime:
    """The runtime of one drift instance, from its settings."""
    # Files, port and credentials first: the topic metadata read below would turn a
    # wrong password into a vague transport error.
    preflight(settings.kafka, settings.http)
    reference = load_reference(settings.reference_path)
    kafka = settings.kafka
    features = kafka.topic(settings.features_topic)
    predictions = kafka.topic(settings.predictions_topic)
    partitions = settings.source_partitions or _partitions(kafka, features)
    if settings.monitor_predictions and not settings.source_partitions:
        other = _partitions(kafka, predictions)
        if other != partitions:  # the range assignor pairs partition p of both topics
            raise ConfigError(
                f"{predictions} has {other} partitions but {features} has {partitions}; "
                "they must be co-partitioned (same count, same key)"
            )
    if settings.state_key.get_secret_value() == DEV_STATE_KEY:
        log.warning("drift state is signed with the development key; set "
                    "STREAMML_DRIFT_STATE_KEY in production")  # fmt: skip
    processor = build_processor(settings, reference, partitions)
    inputs = {
        features: "FeatureVector",
        kafka.topic(settings.windows_topic): "DriftWindowReport",
    }
    if settings.monitor_predictions:
        inputs[predictions] = "Prediction"
    runtime = StreamRuntime(
        service="drift",
        processor=processor,
        inputs=inputs,
        kafka=kafka,
        settings=settings.runtime,
        http=settings.http,
    )
    log.info("reference loaded", extra=fields(
        reference=reference.fingerprint, model=f"{reference.model_name}/{reference.model_version}",
        features=len(reference.feature_names), categorical=len(reference.categorical),
        window_ms=settings.window_ms, partitions=partitions,
    ))  # fmt: skip
    return runtime
