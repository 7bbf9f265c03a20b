"""Dead-letter redrive against a real service on the runtime: fix, redrive, retry, park."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Message

from streamml import deadletter as dl
from streamml.ops import deadletters
from streamml.ops.common import kafka_settings
from streamml.ops.settings import OpsSettings
from tests.integration.runtime_support import CODEC, make_events
from tests.integration.test_ops_support import OUTPUT, ops_cli, ops_test_process
from tests.kafkatest import consume_all, create_topics, produce

pytestmark = [pytest.mark.integration, pytest.mark.replay, pytest.mark.dlq]


def _header(message: Message, name: str) -> str | None:
    found = None
    for key, value in message.headers() or []:
        if key == name:
            found = value.decode()
    return found


def _by_amount(events: list[dict], amounts: list[float]) -> list[dict]:
    out = []
    for event, amount in zip(events, amounts, strict=True):
        out.append({**event, "payload": {**event["payload"], "amount": amount}})
    return out


def test_redrive_after_fix_retries_then_parks_and_never_sends_twice(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2, names=[topic_prefix + OUTPUT])
    dlq = f"{topic_prefix}events.dlq"
    out = f"{topic_prefix}{OUTPUT}"
    # 4 fine, 6 fixed by raising the limit to 1000, 3 that fail whatever we do.
    amounts = [50.0] * 4 + [500.0] * 6 + [5000.0] * 3
    events = _by_amount(make_events(len(amounts), seed=11, n_entities=13), amounts)
    produce(
        kafka_bootstrap,
        f"{topic_prefix}events",
        [(e["entity_id"].encode(), CODEC.encode("Event", e), [("origin", b"up")]) for e in events],
    )

    strict = ops_test_process(kafka_bootstrap, topic_prefix, logs_dir, max_amount=100).start()
    try:
        strict.wait_ready(60)
        assert len(consume_all(kafka_bootstrap, out, expect=4)) == 4
        dead = consume_all(kafka_bootstrap, dlq, expect=9)
    finally:
        assert strict.terminate() == 0
    assert len(dead) == 9
    assert {_header(m, dl.H_ATTEMPT) for m in dead} == {"1"}

    listed = ops_cli(kafka_bootstrap, topic_prefix, "dlq", "list", "events")
    assert listed.exit_code == 0, listed.output
    assert "validation.amount" in listed.stdout and "ops-test" in listed.stdout
    assert "total 9, pending 9" in listed.stdout
    shown = ops_cli(kafka_bootstrap, topic_prefix, "dlq", "show", "events", "--limit", "1")
    assert shown.exit_code == 0, shown.output
    assert "value (Event):" in shown.stdout and '"event_id"' in shown.stdout
    assert "dlq.error.message: amount" in shown.stdout

    # Dry run: nothing moves.
    dry = ops_cli(kafka_bootstrap, topic_prefix, "dlq", "redrive", "events", "--dry-run")
    assert dry.exit_code == 0 and "would send 9" in dry.stdout
    assert len(consume_all(kafka_bootstrap, f"{topic_prefix}events", idle_s=1.0)) == 13

    fixed = ops_test_process(kafka_bootstrap, topic_prefix, logs_dir, max_amount=1000).start()
    try:
        fixed.wait_ready(60)
        first = ops_cli(kafka_bootstrap, topic_prefix, "dlq", "redrive", "events", "--yes")
        assert first.exit_code == 0, first.output
        assert "done: sent 9" in first.stdout and "parked 0" in first.stdout
        outputs = consume_all(kafka_bootstrap, out, expect=10)
        dead = consume_all(kafka_bootstrap, dlq, expect=12)
        assert len(outputs) == 10  # the 6 fixed ones went through
        redriven_out = [m for m in outputs if _header(m, dl.H_REDRIVE_ID)]
        assert len(redriven_out) == 6
        assert sorted(CODEC.decode(m.value(), "Label")["event_id"] for m in outputs) == sorted(
            e["event_id"] for e in events if e["payload"]["amount"] <= 1000
        )
        second_failures = [m for m in dead if _header(m, dl.H_ATTEMPT) == "2"]
        assert len(second_failures) == 3  # still failing: back with attempt + 1
        for message in second_failures:
            assert _header(message, dl.H_REDRIVE_ATTEMPT) == "1"
            assert _header(message, "origin") == "up"  # original headers survive the trip
            assert CODEC.decode(message.value(), "Event")["payload"]["amount"] == 5000.0

        second = ops_cli(kafka_bootstrap, topic_prefix, "dlq", "redrive", "events", "--yes")
        assert "done: sent 3" in second.stdout, second.output  # only the new dead letters
        dead = consume_all(kafka_bootstrap, dlq, expect=15)
        attempts = sorted(_header(m, dl.H_ATTEMPT) or "" for m in dead)
        assert attempts == ["1"] * 9 + ["2"] * 3 + ["3"] * 3

        third = ops_cli(kafka_bootstrap, topic_prefix, "dlq", "redrive", "events", "--yes")
        assert "done: sent 0" in third.stdout and "parked 3" in third.stdout, third.output
        parked = consume_all(kafka_bootstrap, f"{dlq}.parked", expect=3)
        assert len(parked) == 3
        assert all(_header(m, dl.H_ATTEMPT) == "3" for m in parked)

        fourth = ops_cli(kafka_bootstrap, topic_prefix, "dlq", "redrive", "events", "--yes")
        assert fourth.exit_code == 0 and "nothing to redrive" in fourth.stdout
        assert "15 already redriven or parked" in fourth.stdout
    finally:
        assert fixed.terminate() == 0
    assert len(consume_all(kafka_bootstrap, f"{topic_prefix}events", idle_s=1.0)) == 13 + 9 + 3
    assert len(consume_all(kafka_bootstrap, dlq, idle_s=1.0)) == 15
    assert len(consume_all(kafka_bootstrap, f"{dlq}.parked", idle_s=1.0)) == 3
    assert len(consume_all(kafka_bootstrap, out, idle_s=1.0)) == 10
    final = ops_cli(kafka_bootstrap, topic_prefix, "dlq", "list", "events")
    assert "pending 0" in final.stdout


def test_redrive_filters_by_error_class_and_offsets(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    events = make_events(6, seed=5)
    letters = []
    for i, event in enumerate(events):
        headers = dl.dead_letter_headers(
            [("trace", bytes([i]))],
            error_class="decode" if i % 2 else "validation.range",
            message="bad",
            service="features",
            stage="validate",
            topic=f"{topic_prefix}events",
            partition=0,
            offset=100 + i,
            source_timestamp_ms=1_795_300_000_000 + i,
            now_ms=1_795_300_001_000 + i,
        )
        letters.append((b"k%d" % i, CODEC.encode("Event", event), headers))
    produce(kafka_bootstrap, f"{topic_prefix}events.dlq", letters, partition=0)

    result = ops_cli(
        kafka_bootstrap,
        topic_prefix,
        "dlq",
        "redrive",
        "events.dlq",
        "--error-class",
        "decode",
        "-p",
        "0",
        "--from-offset",
        "2",
        "--yes",
    )
    assert result.exit_code == 0, result.output
    assert "done: sent 2" in result.stdout  # offsets 3 and 5
    sent = consume_all(kafka_bootstrap, f"{topic_prefix}events", expect=2)
    assert sorted(_header(m, dl.H_REDRIVE_SOURCE) or "" for m in sent) == [
        f"{topic_prefix}events.dlq/0/3",
        f"{topic_prefix}events.dlq/0/5",
    ]
    for message in sent:
        offset = int((_header(message, dl.H_REDRIVE_SOURCE) or "").rsplit("/", 1)[1])
        assert message.key() == letters[offset][0] and message.value() == letters[offset][1]
        assert (message.headers() or [])[0] == ("trace", bytes([offset]))
        assert message.timestamp()[1] == 1_795_300_000_000 + offset
        assert not any(k.startswith("dlq.") for k, _ in message.headers() or [])


def test_two_redrives_planned_at_once_send_each_dead_letter_once(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    letters = []
    for i, event in enumerate(make_events(5, seed=8)):
        headers = dl.dead_letter_headers(
            [], error_class="decode", message="bad", service="features", stage="decode",
            topic=f"{topic_prefix}events", partition=0, offset=i,
            source_timestamp_ms=1_795_300_000_000, now_ms=1_795_300_000_000,
        )  # fmt: skip
        letters.append((b"k", CODEC.encode("Event", event), headers))
    produce(kafka_bootstrap, f"{topic_prefix}events.dlq", letters)
    kafka = kafka_settings(kafka_bootstrap, topic_prefix)
    ops = OpsSettings(chunk_records=2)
    dlq = f"{topic_prefix}events.dlq"
    # Both operators look at the DLQ before either sends anything.
    first = deadletters.prepare_redrive(
        kafka, dlq, deadletters.RedriveFilter(), ops, max_attempts=3
    )
    second = deadletters.prepare_redrive(
        kafka, dlq, deadletters.RedriveFilter(), ops, max_attempts=3
    )
    assert len(first.send) == len(second.send) == 5
    assert deadletters.execute_redrive(kafka, first, ops) == (5, 0)
    assert deadletters.execute_redrive(kafka, second, ops) == (0, 0)
    assert len(consume_all(kafka_bootstrap, f"{topic_prefix}events", idle_s=1.0)) == 5
