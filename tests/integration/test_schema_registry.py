"""Features and scorer against a real Confluent-compatible schema registry (Apicurio over
HTTPS with a private CA): subjects ``<topic>-value``, and the predictions decode with
confluent-kafka's own AvroDeserializer, as a downstream consumer reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.conftest import RegistryEndpoint
from tests.integration.runtime_support import encoded, make_events
from tests.integration.test_features_service import features_process
from tests.integration.test_scorer import _scorer, trained
from tests.kafkatest import consume_all, create_topics, produce

pytestmark = [pytest.mark.integration, pytest.mark.registry]

__all__ = ["trained"]  # the scorer's signed models, a fixture of this module too


def test_features_and_scorer_register_value_subjects_and_predictions_decode_downstream(
    kafka_bootstrap: str,
    schema_registry: RegistryEndpoint,
    topic_prefix: str,
    logs_dir: Path,
    trained: tuple[Path, Path, Path],
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2)
    events = make_events(400, seed=17)
    produce(kafka_bootstrap, f"{topic_prefix}events", encoded(events))
    env = {"STREAMML_KAFKA_TOPIC_PREFIX": topic_prefix, **schema_registry.client_env()}
    features = features_process(kafka_bootstrap, topic_prefix, logs_dir, env=env).start()
    scorer = _scorer(kafka_bootstrap, topic_prefix, logs_dir, trained, extra=env).start()
    try:
        predictions = consume_all(
            kafka_bootstrap, f"{topic_prefix}predictions", expect=len(events), timeout_s=180
        )
    finally:
        assert features.terminate() == 0
        assert scorer.terminate() == 0
        features.stop()
        scorer.stop()
    assert len(predictions) == len(events)

    client = SchemaRegistryClient(
        {"url": schema_registry.url, "ssl.ca.location": str(schema_registry.ca_path)}
    )
    subjects = set(client.get_subjects())
    assert {f"{topic_prefix}features-value", f"{topic_prefix}predictions-value"} <= subjects
    registered = client.get_latest_version(f"{topic_prefix}predictions-value")
    assert '"Prediction"' in registered.schema.schema_str

    # Every value is in the registry wire format: magic byte 0 + the id of that subject.
    for message in predictions:
        value = message.value()
        assert value[:1] == b"\x00"
        assert int.from_bytes(value[1:5], "big") == registered.schema_id

    deserialize = AvroDeserializer(client)
    context = SerializationContext(f"{topic_prefix}predictions", MessageField.VALUE)
    decoded: list[dict[str, Any]] = [deserialize(m.value(), context) for m in predictions]
    assert sorted(p["event_id"] for p in decoded) == sorted(e["event_id"] for e in events)
    by_event = {e["event_id"]: e for e in events}
    for prediction in decoded:
        assert prediction["entity_id"] == by_event[prediction["event_id"]]["entity_id"]
        assert 0.0 <= prediction["score"] <= 1.0
        assert prediction["decision"] == (prediction["score"] >= prediction["threshold"])
