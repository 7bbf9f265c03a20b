"""The issue's end-to-end check: replaying `events` while features and scorer run yields
zero extra feature vectors and zero extra predictions (dedup by event_id)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from services.scorer.artifact import generate_keypair, load_private_key
from services.scorer.training import train_and_sign
from streamml.ops.common import admin_client, kafka_settings
from streamml.ops.offsets import committed
from tests.integration.runtime_support import CODEC, make_events
from tests.integration.test_ops_support import ops_cli
from tests.kafkatest import ServiceProcess, consume_all, create_topics, free_port, produce

pytestmark = [pytest.mark.integration, pytest.mark.replay]

N_EVENTS = 300


def _service(module: str, name: str, bootstrap: str, prefix: str, logs: Path,
             extra: dict[str, str]) -> ServiceProcess:  # fmt: skip
    port = free_port()
    env_prefix = f"STREAMML_{name.upper()}_"
    env = {
        "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
        f"{env_prefix}HTTP__PORT": str(port),
        f"{env_prefix}RUNTIME__INSTANCE_ID": "a",
        f"{env_prefix}RUNTIME__SESSION_TIMEOUT_MS": "6000",
        **extra,
    }
    return ServiceProcess(["-m", module], env, http_port=port, log_path=logs / f"{name}.log")


def _caught_up(bootstrap: str, prefix: str, group: str, topic: str, timeout_s: float) -> None:
    """Wait until ``group`` committed past the last committed record of every partition.

    The last offset of a transactional topic is a commit marker, never consumed, so the
    goal is one past the last record read, not the high watermark.
    """
    ends: dict[int, int] = {}
    for message in consume_all(bootstrap, topic, idle_s=1.0):
        ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)
    admin = admin_client(kafka_settings(bootstrap, prefix))
    deadline = time.monotonic() + timeout_s
    while True:
        done = committed(admin, group, topic, sorted(ends))
        if all(done.get(p, -1) >= end for p, end in ends.items()):
            return
        assert time.monotonic() < deadline, f"{group} not caught up: {done} vs {ends}"
        time.sleep(0.5)


def _metric(process: ServiceProcess, name: str) -> float:
    _, body = process.http("/metrics")
    text = body.get("text", "")
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_replay_into_events_makes_no_extra_feature_vectors_or_predictions(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2)
    _, public_key = generate_keypair(tmp_path / "keys")
    train_and_sign(
        events=3000, seed=7, out=tmp_path / "models",
        key=load_private_key(tmp_path / "keys" / "signing.key"),
    )  # fmt: skip
    events = make_events(N_EVENTS, seed=21, n_entities=40)
    produce(
        kafka_bootstrap,
        f"{topic_prefix}events",
        [(e["entity_id"].encode(), CODEC.encode("Event", e), []) for e in events],
    )
    features = _service("services.features", "features", kafka_bootstrap, topic_prefix,
                        logs_dir, {})  # fmt: skip
    scorer = _service(
        "services.scorer", "scorer", kafka_bootstrap, topic_prefix, logs_dir,
        {"STREAMML_SCORER_MODEL_DIR": str(tmp_path / "models"),
         "STREAMML_SCORER_PUBLIC_KEY_PATH": str(public_key)},
    )  # fmt: skip
    features.start()
    scorer.start()
    try:
        features.wait_ready(90)
        scorer.wait_ready(120)
        _caught_up(kafka_bootstrap, topic_prefix, f"{topic_prefix}features",
                   f"{topic_prefix}events", 120)  # fmt: skip
        _caught_up(kafka_bootstrap, topic_prefix, f"{topic_prefix}scorer",
                   f"{topic_prefix}features", 120)  # fmt: skip
        vectors = consume_all(kafka_bootstrap, f"{topic_prefix}features", idle_s=2)
        predictions = consume_all(kafka_bootstrap, f"{topic_prefix}predictions", idle_s=2)
        assert len(vectors) > 0 and len(predictions) == len(vectors)
        duplicates_before = _metric(features, "streamml_features_duplicates_total")

        # Replay all of partition 0 by offsets, and partition 1 by time, into `events`.
        end_0 = sum(1 for m in consume_all(kafka_bootstrap, f"{topic_prefix}events", idle_s=1)
                    if m.partition() == 0)  # fmt: skip
        by_offset = ops_cli(kafka_bootstrap, topic_prefix, "replay", "events", "-p", "0",
                            "--from-offset", "0", "--to-offset", str(end_0), "--yes")  # fmt: skip
        assert by_offset.exit_code == 0, by_offset.output
        by_time = ops_cli(kafka_bootstrap, topic_prefix, "replay", "events", "-p", "1",
                          "--from-time", "-1h", "--to-time", "now", "--yes")  # fmt: skip
        assert by_time.exit_code == 0, by_time.output
        replayed = len(consume_all(kafka_bootstrap, f"{topic_prefix}events", idle_s=1))
        assert replayed == 2 * N_EVENTS

        _caught_up(kafka_bootstrap, topic_prefix, f"{topic_prefix}features",
                   f"{topic_prefix}events", 120)  # fmt: skip
        _caught_up(kafka_bootstrap, topic_prefix, f"{topic_prefix}scorer",
                   f"{topic_prefix}features", 120)  # fmt: skip
        assert _metric(features, "streamml_features_duplicates_total") - duplicates_before == (
            N_EVENTS
        )
        vectors_after = consume_all(kafka_bootstrap, f"{topic_prefix}features", idle_s=2)
        predictions_after = consume_all(kafka_bootstrap, f"{topic_prefix}predictions", idle_s=2)
    finally:
        features.stop()
        scorer.stop()
    assert len(vectors_after) == len(vectors)
    assert len(predictions_after) == len(predictions)
    ids = [CODEC.decode(m.value(), "Prediction")["event_id"] for m in predictions_after]
    assert len(set(ids)) == len(ids)
