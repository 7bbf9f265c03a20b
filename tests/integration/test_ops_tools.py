"""offsets reset/show, tail and topics against the real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from streamml.ops.common import admin_client, kafka_settings
from streamml.ops.offsets import active_members, committed
from tests.integration.runtime_support import CODEC, make_events
from tests.integration.test_ops_support import OUTPUT, SERVICE, ops_cli, ops_test_process
from tests.kafkatest import consume_all, create_topics, produce

pytestmark = [pytest.mark.integration, pytest.mark.replay]


def _wait_until_empty(bootstrap: str, prefix: str, group: str, timeout_s: float = 30) -> None:
    admin = admin_client(kafka_settings(bootstrap, prefix))
    deadline = time.monotonic() + timeout_s
    while active_members(admin, group):
        assert time.monotonic() < deadline, f"group {group} still has members"
        time.sleep(0.5)


def test_offsets_reset_refuses_with_active_member_then_resets(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2, names=[topic_prefix + OUTPUT])
    events = make_events(40, seed=2, n_entities=10)
    produce(
        kafka_bootstrap,
        f"{topic_prefix}events",
        [(e["entity_id"].encode(), CODEC.encode("Event", e), []) for e in events],
    )
    group = f"{topic_prefix}{SERVICE}"
    admin = admin_client(kafka_settings(kafka_bootstrap, topic_prefix))
    service = ops_test_process(kafka_bootstrap, topic_prefix, logs_dir, max_amount=1e9).start()
    try:
        service.wait_ready(60)
        assert len(consume_all(kafka_bootstrap, f"{topic_prefix}{OUTPUT}", expect=40)) == 40
        deadline = time.monotonic() + 30
        while sum(committed(admin, group, f"{topic_prefix}events", [0, 1]).values()) < 40:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        before = committed(admin, group, f"{topic_prefix}events", [0, 1])

        refused = ops_cli(
            kafka_bootstrap,
            topic_prefix,
            "offsets",
            "reset",
            "--service",
            SERVICE,
            "--topic",
            "events",
            "--to-earliest",
            "--yes",
        )
        assert refused.exit_code == 2, refused.output
        assert refused.stderr.startswith("error: group") and "active member" in refused.stderr
        assert refused.stderr.count("\n") == 1
        assert committed(admin, group, f"{topic_prefix}events", [0, 1]) == before

        dry = ops_cli(
            kafka_bootstrap,
            topic_prefix,
            "offsets",
            "reset",
            "--service",
            SERVICE,
            "--topic",
            "events",
            "--to-earliest",
            "--dry-run",
        )
        assert dry.exit_code == 0 and "would be refused" in dry.stdout
        shown = ops_cli(
            kafka_bootstrap,
            topic_prefix,
            "offsets",
            "show",
            "--service",
            SERVICE,
            "--topic",
            "events",
        )
        assert "active members: none" not in shown.stdout
    finally:
        assert service.terminate() == 0
    _wait_until_empty(kafka_bootstrap, topic_prefix, group)

    reset = ops_cli(
        kafka_bootstrap,
        topic_prefix,
        "offsets",
        "reset",
        "--service",
        SERVICE,
        "--topic",
        "events",
        "--to-earliest",
        "--yes",
    )
    assert reset.exit_code == 0, reset.output
    assert committed(admin, group, f"{topic_prefix}events", [0, 1]) == {0: 0, 1: 0}
    for partition, offset in before.items():
        assert f"{partition}: {offset} -> 0" in reset.stdout

    one = ops_cli(
        kafka_bootstrap,
        topic_prefix,
        "offsets",
        "reset",
        "--group",
        group,
        "--topic",
        "events",
        "-p",
        "1",
        "--to-offset",
        "3",
        "--yes",
    )
    assert one.exit_code == 0, one.output
    assert committed(admin, group, f"{topic_prefix}events", [0, 1]) == {0: 0, 1: 3}

    # Reprocessing after the reset: the service reads everything again from there.
    again = ops_test_process(kafka_bootstrap, topic_prefix, logs_dir, max_amount=1e9).start()
    try:
        again.wait_ready(60)
        expected = 40 + before[0] + before[1] - 3
        assert len(consume_all(kafka_bootstrap, f"{topic_prefix}{OUTPUT}", expect=expected)) == (
            expected
        )
    finally:
        assert again.terminate() == 0


def test_tail_prints_decodable_json_lines(kafka_bootstrap: str, topic_prefix: str) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2)
    events = make_events(5, seed=4)
    produce(
        kafka_bootstrap,
        f"{topic_prefix}events",
        [(e["entity_id"].encode(), CODEC.encode("Event", e), [("origin", b"t")]) for e in events]
        + [(b"bad", b"not avro", [])],
    )
    result = ops_cli(
        kafka_bootstrap,
        topic_prefix,
        "tail",
        "events",
        "--from-beginning",
        "--max",
        "6",
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 6
    decoded = [line for line in lines if line["schema"] == "Event"]
    assert sorted(line["value"]["event_id"] for line in decoded) == sorted(
        e["event_id"] for e in events
    )
    for line in decoded:
        assert line["key"] == line["value"]["entity_id"]
        assert line["headers"] == [["origin", "t"]]
        assert line["topic"] == f"{topic_prefix}events" and line["partition"] in (0, 1)
    (bad,) = [line for line in lines if line["key"] == "bad"]
    assert bad["value"] is None and bad["value_hex"] == b"not avro".hex()

    idle = ops_cli(
        kafka_bootstrap,
        topic_prefix,
        "tail",
        "events",
        "--idle-exit",
        "1",
        "-p",
        "0",
    )
    assert idle.exit_code == 0 and idle.stdout == ""  # from the end: nothing new


def test_topics_create_is_idempotent_and_describe_reports(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    dry = ops_cli(kafka_bootstrap, topic_prefix, "topics", "create", "--dry-run")
    assert dry.exit_code == 0 and "would create" in dry.stdout
    missing = ops_cli(kafka_bootstrap, topic_prefix, "topics", "describe", "events")
    assert "missing" in missing.stdout
    first = ops_cli(kafka_bootstrap, topic_prefix, "topics", "create")
    assert first.exit_code == 0, first.output
    assert "already there 0" in first.stdout
    second = ops_cli(kafka_bootstrap, topic_prefix, "topics", "create")
    assert "done: created 0" in second.stdout
    described = ops_cli(kafka_bootstrap, topic_prefix, "topics", "describe", "operator.redrive.log")
    assert described.exit_code == 0, described.output
    assert f"{topic_prefix}operator.redrive.log" in described.stdout
    assert "cleanup.policy=compact" in described.stdout
