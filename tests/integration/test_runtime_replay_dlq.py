"""A replayed range that holds bad records does not dead-letter them a second time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamml import deadletter as dl
from tests.integration.runtime_support import counter_process, encoded, make_events
from tests.integration.test_ops_support import ops_cli
from tests.kafkatest import consume_all, create_topics, produce

pytestmark = [pytest.mark.integration, pytest.mark.replay, pytest.mark.dlq]


def test_replaying_dead_lettered_records_leaves_one_dead_letter_each(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1, names=[f"{topic_prefix}example.out"])
    events = make_events(200, seed=41, n_entities=20)
    garbage = [(f"bad-{i}".encode(), os.urandom(40), [("n", str(i).encode())]) for i in range(5)]
    # Offsets 0..99 valid, 100..104 garbage, 105..204 valid.
    stream = encoded(events[:100]) + garbage + encoded(events[100:])
    produce(kafka_bootstrap, f"{topic_prefix}events", stream, partition=0)
    proc = counter_process(kafka_bootstrap, topic_prefix, logs_dir).start()
    try:
        consume_all(kafka_bootstrap, f"{topic_prefix}example.out", expect=200)
        first = consume_all(kafka_bootstrap, f"{topic_prefix}events.dlq", expect=5)
        assert len(first) == 5
        # The operator replays offsets [95, 110): 10 valid records and the 5 bad ones.
        result = ops_cli(
            kafka_bootstrap, topic_prefix, "replay", "events", "-p", "0",
            "--from-offset", "95", "--to-offset", "110", "--yes",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        # The 10 valid copies are processed again (the counter does not deduplicate) ...
        outputs = consume_all(kafka_bootstrap, f"{topic_prefix}example.out", expect=210)
        assert len(outputs) == 210
        # ... and the 5 bad copies are not dead-lettered again.
        dead = consume_all(kafka_bootstrap, f"{topic_prefix}events.dlq", idle_s=3.0)
        assert len(dead) == 5, [dict(m.headers() or []).get(dl.H_SOURCE_OFFSET) for m in dead]
        assert sorted(int(dict(m.headers() or [])[dl.H_SOURCE_OFFSET]) for m in dead) == list(
            range(100, 105)
        )
        _, metrics = proc.http("/metrics")
        skipped = [
            line
            for line in metrics["text"].splitlines()
            if line.startswith("streamml_replayed_dead_letters_skipped_total{")
        ]
        assert skipped and float(skipped[0].rsplit(" ", 1)[1]) == 5, skipped
        # The runbook's check: `streamml dlq list events` shows the 5 first-pass letters only.
        listed = ops_cli(kafka_bootstrap, topic_prefix, "dlq", "list", "events")
        assert listed.exit_code == 0, listed.output
        assert "total 5," in listed.stdout, listed.stdout
    finally:
        assert proc.terminate() == 0
