"""Start-up on the real broker: KRaft storage formatting (cluster ids that start with '-')
metadata errors that heal by waiting, and the changelogs the runtime creates."""

from __future__ import annotations

import base64
import shutil
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from streamml.broker import (
    LocalBroker,
    _kafka_cluster_id,
    fetch_kafka_jars,
    format_storage,
    free_port,
)
from streamml.runtime.provisioning import CHANGELOG_SEGMENT_MS, ensure_topics
from streamml.settings import KafkaSettings, RuntimeSettings
from tests.kafkatest import create_topics, wait_until

pytestmark = [pytest.mark.integration]


def test_a_cluster_id_that_starts_with_a_dash_formats_the_storage(tmp_path: Path) -> None:
    # 0xF8 as the first byte makes the first base64 character '-' (index 62).
    cluster_id = base64.urlsafe_b64encode(bytes([0xF8]) + bytes(15)).decode().rstrip("=")
    assert cluster_id.startswith("-") and len(cluster_id) == 22
    broker = LocalBroker(run_dir=tmp_path / "kafka", port=0, sasl_ssl_port=0)
    broker.run_dir.mkdir(parents=True)
    config = broker._write_config(controller_port=broker._controller_port())
    java = shutil.which("java")
    assert java is not None
    format_storage(java, f"{fetch_kafka_jars()}/*", config, cluster_id, scram_users={"svc": "pw-1"})
    meta = (broker.run_dir / "data" / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}\n" in meta


def test_cluster_ids_are_22_url_safe_characters() -> None:
    ids = {_kafka_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and "=" not in i for i in ids)


def test_listing_changelog_offsets_waits_for_a_topic_the_broker_does_not_know_yet(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """The real broker answers for a topic that is not (yet) in its metadata; the runtime's
    start-up listing retries with backoff until the topic is there instead of exiting."""
    from confluent_kafka import IsolationLevel, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

    try:  # after the runtime split (i13-runtime): provisioning.list_offsets
        from streamml.runtime.provisioning import list_offsets
    except ImportError:
        from streamml.runtime import StreamRuntime

        list_offsets = StreamRuntime._list_offsets

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topic = f"{topic_prefix}late-changelog"
    tps = [TopicPartition(topic, 0)]
    # What the broker says first: an error that librdkafka does not mark retriable().
    first = admin.list_offsets({tps[0]: OffsetSpec.latest()}, request_timeout=10)[tps[0]]
    with pytest.raises(KafkaException) as info:
        first.result()
    assert not info.value.args[0].retriable()

    def create_later() -> None:
        time.sleep(2.0)
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[
            topic
        ].result()

    creator = threading.Thread(target=create_later)
    creator.start()
    try:
        offsets = list_offsets(admin, tps, IsolationLevel.READ_COMMITTED, OffsetSpec)
    finally:
        creator.join()
    assert offsets == {(topic, 0): 0}


def test_librdkafka_lines_of_a_dead_broker_are_structured_and_not_repeated(
    logs_dir: Path,
) -> None:
    """librdkafka retries a closed port several times a second for the 30 s the start-up
    waits; its lines reach the service's JSON log once, with facility and client, and the
    service gives up with exit code 1 (an infrastructure fault, not a configuration one)."""
    import json

    from tests.integration.test_features_service import features_process

    dead = free_port()
    service = features_process(
        f"127.0.0.1:{dead}", "", logs_dir, env={"STREAMML_FEATURES_LOG_FORMAT": "json"}
    ).start()
    try:
        code = service.wait(120)
    finally:
        service.stop()
    lines = (logs_dir / "features.log").read_text().splitlines()
    assert code == 1
    assert not [line for line in lines if line.startswith("%")]  # no raw librdkafka stderr
    records = [json.loads(line) for line in lines]
    refused = [r for r in records if r["logger"] == "streamml.librdkafka" and "refused" in r["msg"]]
    assert len(refused) == 1, records
    assert refused[0]["facility"] == "FAIL" and refused[0]["level"] == "warning"
    assert refused[0]["rdkafka_severity"] == "error"  # librdkafka's own severity, kept
    assert refused[0]["service"] == "features"
    assert any(f"cannot reach Kafka at 127.0.0.1:{dead}" in r["msg"] for r in records)


def test_a_changelog_is_created_compacted_with_its_segment_rolls_jittered(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2)
    changelog = f"{topic_prefix}example-store-changelog"
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    ensure_topics(kafka, RuntimeSettings(), [f"{topic_prefix}events"], [changelog])
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource("topic", changelog)

    def described() -> dict[str, str] | None:
        try:  # the broker may not know the new topic at once
            config = admin.describe_configs([resource])[resource].result(30)
        except KafkaException:
            return None
        return {k: config[k].value for k in ("cleanup.policy", "segment.ms", "segment.jitter.ms")}

    found = wait_until(described, 30, f"the configuration of {changelog}")
    # Rolls up to half a segment early, at random: the broker's default jitter is 0, with
    # which changelogs created together roll, and wait for the one cleaner, together.
    assert found == {
        "cleanup.policy": "compact",
        "segment.ms": str(CHANGELOG_SEGMENT_MS),
        "segment.jitter.ms": str(CHANGELOG_SEGMENT_MS // 2),
    }
