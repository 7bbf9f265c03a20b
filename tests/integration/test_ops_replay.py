"""Replay against the real broker: exact ranges, byte-identical copies, dry run, resume."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from streamml.ops import replay
from streamml.ops.common import kafka_settings, read_log
from streamml.ops.settings import OpsSettings
from tests.integration.test_ops_support import ops_cli, produce_timed
from tests.kafkatest import consume_all, create_topics

pytestmark = [pytest.mark.integration, pytest.mark.replay]

T0 = 1_795_300_000_000


def _replayed(messages: list[Message]) -> list[Message]:
    return [m for m in messages if any(k == "replay.id" for k, _ in m.headers() or [])]


def _offsets(messages: list[Message]) -> list[int]:
    return [
        int(dict(m.headers() or [])["replay.source"].decode().rsplit("/", 1)[1]) for m in messages
    ]


def test_time_range_copies_exactly_the_records_inside_it(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2)
    events = f"{topic_prefix}events"
    # Offsets 0..7 on partition 1; timestamp of offset 4 is out of order (before the range).
    stamps = [0, 10, 20, 30, 5, 40, 50, 60]
    records = [
        (f"k{i}".encode(), f"v{i}".encode(), [("i", str(i).encode())], T0 + s)
        for i, s in enumerate(stamps)
    ]
    produce_timed(kafka_bootstrap, events, records, partition=1)

    # [T0+20, T0+50): includes the record stamped exactly T0+20, excludes the one at T0+50.
    result = ops_cli(
        kafka_bootstrap,
        topic_prefix,
        "replay",
        "events",
        "--target",
        "predictions",
        "--from-time",
        str(T0 + 20),
        "--to-time",
        str(T0 + 50),
        "--yes",
    )
    assert result.exit_code == 0, result.output
    copied = consume_all(kafka_bootstrap, f"{topic_prefix}predictions", expect=3)
    assert sorted(_offsets(copied)) == [2, 3, 5]
    assert sorted(m.timestamp()[1] - T0 for m in copied) == [20, 30, 40]
    assert all(m.partition() == 1 for m in copied)
    assert "done: copied 3 records" in result.stdout

    # A range that holds no record is refused, and nothing is written.
    empty = ops_cli(
        kafka_bootstrap,
        topic_prefix,
        "replay",
        "events",
        "--target",
        "predictions",
        "--from-time",
        str(T0 + 61),
        "--to-time",
        str(T0 + 90),
        "--yes",
    )
    assert empty.exit_code == 2
    assert empty.stderr.startswith("error: empty range")
    assert len(consume_all(kafka_bootstrap, f"{topic_prefix}predictions", idle_s=1.0)) == 3


def test_offset_range_replay_is_byte_identical_and_dry_run_writes_nothing(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2)
    events = f"{topic_prefix}events"
    records = [
        (
            None if i == 3 else f"key-{i}".encode(),
            bytes([i]) * (i + 1),
            [("trace", b"\x00\xff" + bytes([i])), ("trace", b"second")],
            T0 + i,
        )
        for i in range(12)
    ]
    produce_timed(kafka_bootstrap, events, records, partition=0)
    log_before = consume_all(kafka_bootstrap, f"{topic_prefix}operator.redrive.log", idle_s=0.5)

    dry = ops_cli(
        kafka_bootstrap,
        topic_prefix,
        "replay",
        "events",
        "-p",
        "0",
        "--from-offset",
        "2",
        "--to-offset",
        "9",
        "--dry-run",
    )
    assert dry.exit_code == 0, dry.output
    assert "would copy 7 records" in dry.stdout
    assert "2026-11-21" in dry.stdout  # first/last times are shown
    assert len(consume_all(kafka_bootstrap, events, idle_s=1.0)) == 12
    after_dry = consume_all(kafka_bootstrap, f"{topic_prefix}operator.redrive.log", idle_s=0.5)
    assert len(after_dry) == len(log_before)

    # Into the same topic (the default target): the end is fixed when planning.
    run = ops_cli(
        kafka_bootstrap,
        topic_prefix,
        "replay",
        "events",
        "-p",
        "0",
        "--from-offset",
        "2",
        "--to-offset",
        "9",
        "--rate",
        "500",
        "--yes",
    )
    assert run.exit_code == 0, run.output
    everything = consume_all(kafka_bootstrap, events, expect=19)
    assert len(everything) == 19
    copies = _replayed(everything)
    originals = {m.offset(): m for m in everything if m not in copies}
    assert _offsets(copies) == list(range(2, 9))
    for copy in copies:
        source_offset = _offsets([copy])[0]
        original = originals[source_offset]
        assert copy.key() == original.key()
        assert copy.value() == original.value()
        assert copy.timestamp() == original.timestamp()
        assert copy.partition() == 0
        headers = copy.headers() or []
        assert headers[:2] == original.headers()
        names = [k for k, _ in headers[2:]]
        assert names == ["replay.id", "replay.source", "replay.at"]
        assert dict(headers)["replay.source"] == f"{events}/0/{source_offset}".encode()


def test_crashed_replay_resumes_without_duplicates_or_gaps(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    events = f"{topic_prefix}events"
    produce_timed(
        kafka_bootstrap,
        events,
        [(b"k", f"v{i}".encode(), [], T0 + i) for i in range(50)],
        partition=0,
    )
    kafka = kafka_settings(kafka_bootstrap, topic_prefix)
    ops = OpsSettings(chunk_records=10)
    plan = replay.make_plan(
        kafka,
        events,
        f"{topic_prefix}predictions",
        replay.RangeRequest(from_offset=0, to_offset=50, partitions=(0,)),
    )
    writer = replay.start(kafka, plan, ops)
    seen = [0]

    def crash_after_25(_offsets: int, records: int) -> None:
        seen[0] += records
        if seen[0] > 25:
            raise KeyboardInterrupt  # the operator's Ctrl-C, or a crash, mid-chunk

    with pytest.raises(KeyboardInterrupt):
        replay.execute(kafka, plan, ops, writer, on_progress=crash_after_25)
    partial = consume_all(kafka_bootstrap, f"{topic_prefix}predictions", idle_s=1.0)
    assert len(partial) == 20  # two committed chunks; the third was never committed

    stored = read_log(kafka, f"{topic_prefix}operator.redrive.log", idle_timeout_s=10)
    assert stored[f"replay/{plan.replay_id}"]["progress"] == {"0": 20}
    wrong = ops_cli(
        kafka_bootstrap, topic_prefix, "replay", "labels", "--resume", plan.replay_id, "--yes"
    )
    assert wrong.exit_code == 2 and "copies from" in wrong.stderr
    unknown = ops_cli(kafka_bootstrap, topic_prefix, "replay", "events", "--resume", "nope")
    assert unknown.exit_code == 2 and "no replay 'nope'" in unknown.stderr
    resumed = ops_cli(
        kafka_bootstrap, topic_prefix, "replay", "events", "--resume", plan.replay_id, "--yes"
    )
    assert resumed.exit_code == 0, resumed.output
    copies = consume_all(kafka_bootstrap, f"{topic_prefix}predictions", expect=50)
    assert sorted(_offsets(copies)) == list(range(50))
    again = ops_cli(
        kafka_bootstrap, topic_prefix, "replay", "events", "--resume", plan.replay_id, "--yes"
    )
    assert again.exit_code == 0 and "already completed" in again.stdout
    assert len(consume_all(kafka_bootstrap, f"{topic_prefix}predictions", idle_s=1.0)) == 50


def test_replay_refuses_offsets_outside_the_log(kafka_bootstrap: str, topic_prefix: str) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    produce_timed(kafka_bootstrap, f"{topic_prefix}events", [(b"k", b"v", [], T0)], partition=0)
    for args, fragment in [
        (["-p", "0", "--from-offset", "0", "--to-offset", "5"], "beyond the end"),
        (["-p", "3", "--from-offset", "0"], "no partition 3"),
        (["--target", "nope", "--from-time", "-1d"], "does not exist"),
    ]:
        result = ops_cli(kafka_bootstrap, topic_prefix, "replay", "events", *args, "--yes")
        assert result.exit_code == 2, result.output
        assert fragment in result.stderr and result.stderr.count("\n") == 1
    assert len(consume_all(kafka_bootstrap, f"{topic_prefix}events", idle_s=1.0)) == 1
