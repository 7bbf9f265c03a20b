"""Registry faults against the REAL schema registry (Apicurio over HTTPS), injected by
:class:`tests.faultproxy.FaultProxy` (a test double in front of it, named as such):

- the registry goes down for 30 s mid-stream: the features service retries the batch (not a
  dead letter), reports not ready naming the registry, and after recovery every event gets
  its prediction exactly once;
- the registry refuses the schema (409): the service exits 2 with one line, writes nothing.

The features and scorer services run as real processes on the real broker.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from streamml.codec import AvroCodec
from streamml.tls import LocalCA
from tests.conftest import RegistryEndpoint
from tests.faultproxy import FaultProxy
from tests.integration.runtime_support import make_events
from tests.integration.test_features_service import features_process
from tests.integration.test_runtime_faults import (
    dead_letters,
    error_lines,
    metric,
    not_ready_because,
    wait_for,
)
from tests.integration.test_scorer import _scorer, trained
from tests.kafkatest import consume_all, create_topics, produce

pytestmark = [pytest.mark.integration, pytest.mark.registry, pytest.mark.chaos]

__all__ = ["trained"]  # the scorer's signed models, a fixture of this module too

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
DOWN_S = 30.0


def _codec(registry: RegistryEndpoint, schemas_dir: Path | None = None) -> AvroCodec:
    return AvroCodec(
        schemas_dir,
        registry_url=registry.url,
        registry_config={"ssl.ca.location": str(registry.ca_path)},
    )


def _event_v2_schemas(tmp_path: Path) -> Path:
    """A copy of schemas/ whose Event has one more field (with a default): a writer schema
    the services have never seen, so reading it needs the registry."""
    target = tmp_path / "schemas-v2"
    shutil.copytree(REPO_SCHEMAS, target)
    path = target / "event.avsc"
    event = json.loads(path.read_text())
    event["fields"].append(
        {"name": "fault_test_note", "type": "string", "default": "", "doc": "test only"}
    )
    path.write_text(json.dumps(event))
    return target


def _dead_letter_topics(prefix: str) -> list[str]:
    return [f"{prefix}{name}" for name in ("events.dlq", "features.dlq", "predictions.dlq")]


def test_registry_down_30s_mid_stream_loses_nothing_and_dead_letters_nothing(
    kafka_bootstrap: str,
    schema_registry: RegistryEndpoint,
    topic_prefix: str,
    logs_dir: Path,
    tmp_path: Path,
    trained: tuple[Path, Path, Path],
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2)
    topic = f"{topic_prefix}events"
    # One stream in event-time order, cut in two: the second half arrives during the outage.
    events = make_events(600, seed=31, n_entities=60)
    before, during = events[:300], events[300:]
    writer = _codec(schema_registry)
    produce(
        kafka_bootstrap, topic,
        [(e["entity_id"].encode(), writer.encode("Event", e, topic=topic), []) for e in before],
    )  # fmt: skip

    proxy = FaultProxy.for_url(
        schema_registry.url, tls=LocalCA(schema_registry.ca_path.parent)
    ).start()
    env = {
        "STREAMML_KAFKA_TOPIC_PREFIX": topic_prefix,
        "STREAMML_KAFKA_SCHEMA_REGISTRY_URL": proxy.url,
        "STREAMML_KAFKA_SCHEMA_REGISTRY_SSL_CA_LOCATION": str(schema_registry.ca_path),
    }
    # Default retry settings (8 attempts, backoff 0.2 s doubling to 10 s): they must outlast
    # this outage.
    features = features_process(kafka_bootstrap, topic_prefix, logs_dir, env=env).start()
    scorer = _scorer(kafka_bootstrap, topic_prefix, logs_dir, trained, extra=env).start()
    try:
        predictions = f"{topic_prefix}predictions"
        consume_all(kafka_bootstrap, predictions, expect=len(before), timeout_s=180)

        # Mid-stream: the registry goes away, then events arrive in a writer schema the
        # services have not seen (a new schema id: the features service must ask the registry).
        proxy.down()
        writer_v2 = _codec(schema_registry, _event_v2_schemas(tmp_path))
        produce(
            kafka_bootstrap, topic,
            [(e["entity_id"].encode(), writer_v2.encode("Event", e, topic=topic), [])
             for e in during],
        )  # fmt: skip
        down_at = time.monotonic()
        body = wait_for(
            lambda: not_ready_because(features, "schema_registry"),
            DOWN_S,
            "features readiness 503 naming the registry",
        )
        assert "unavailable" in body["reason"], body
        assert features.alive and features.http("/healthz")[0] == 200
        assert proxy.injected["refused_connection"] >= 1, proxy.injected  # the fault hit
        # Keep it down for the whole outage (a fault window, not an assertion on time).
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
        assert not_ready_because(features, "schema_registry"), "ready while the registry is down"
        assert metric(features, "streamml_infrastructure_faults_total") >= 2
        assert features.alive and scorer.alive
        proxy.up()

        expected = sorted(e["event_id"] for e in before + during)
        consume_all(kafka_bootstrap, predictions, expect=len(expected), timeout_s=240)
        features.wait_ready(120)
        scorer.wait_ready(60)
        # Everything committed, read once more to the end: none lost, none twice.
        scorer_codec = _codec(schema_registry)
        outputs = consume_all(kafka_bootstrap, predictions, idle_s=5.0, timeout_s=120)
        ids = sorted(scorer_codec.decode(m.value(), "Prediction")["event_id"] for m in outputs)
        assert ids == expected
        for dlq in _dead_letter_topics(topic_prefix):
            assert dead_letters(kafka_bootstrap, dlq) == [], dlq
    finally:
        proxy.stop()
        assert features.terminate() == 0
        assert scorer.terminate() == 0
        features.stop()
        scorer.stop()
    log = (logs_dir / "features.log").read_text()
    assert "Traceback" not in log
    assert "infrastructure fault (schema_registry_unavailable" in log


def test_registry_refusing_the_schema_409_exits_2_with_one_line_and_writes_nothing(
    kafka_bootstrap: str,
    schema_registry: RegistryEndpoint,
    topic_prefix: str,
    logs_dir: Path,
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    topic = f"{topic_prefix}events"
    events = make_events(50, seed=33)
    writer = _codec(schema_registry)  # the producer registers Event directly, not via the proxy
    produce(
        kafka_bootstrap, topic,
        [(e["entity_id"].encode(), writer.encode("Event", e, topic=topic), []) for e in events],
    )  # fmt: skip
    proxy = FaultProxy.for_url(
        schema_registry.url, tls=LocalCA(schema_registry.ca_path.parent)
    ).start()
    proxy.refuse_registrations()  # every POST .../versions -> 409; reads reach the registry
    env = {
        "STREAMML_KAFKA_TOPIC_PREFIX": topic_prefix,
        "STREAMML_KAFKA_SCHEMA_REGISTRY_URL": proxy.url,
        "STREAMML_KAFKA_SCHEMA_REGISTRY_SSL_CA_LOCATION": str(schema_registry.ca_path),
    }
    features = features_process(kafka_bootstrap, topic_prefix, logs_dir, env=env).start()
    try:
        assert features.wait(120) == 2
    finally:
        features.stop()
        proxy.stop()
    assert proxy.injected["conflict"] >= 1, proxy.injected  # the refusal was the real cause
    log = (logs_dir / "features.log").read_text()
    lines = error_lines(logs_dir / "features.log")
    assert len(lines) == 1, lines
    assert "schema registry refused" in lines[0] and "409" in lines[0], lines
    assert f"{topic_prefix}features-value" in lines[0], lines
    assert "compatib" in lines[0], lines
    assert "Traceback" not in log
    for dlq in _dead_letter_topics(topic_prefix):
        assert dead_letters(kafka_bootstrap, dlq) == [], dlq
    assert consume_all(kafka_bootstrap, f"{topic_prefix}features", idle_s=1) == []
    assert consume_all(kafka_bootstrap, f"{topic_prefix}features", read_committed=False,
                       idle_s=1) == []  # fmt: skip
