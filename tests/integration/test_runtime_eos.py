"""Exactly-once proofs of the runtime: SIGKILL mid-stream, and a rebalance mid-stream."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.integration.runtime_support import (
    BackgroundProducer,
    assert_exactly_once,
    counter_process,
    make_events,
)
from tests.kafkatest import consume_all, create_topics

pytestmark = [pytest.mark.integration, pytest.mark.eos]

N = 20_000


def test_sigkill_three_times_mid_stream_keeps_exactly_once(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=4, names=[f"{topic_prefix}example.out"])
    events = make_events(N)
    feeder = BackgroundProducer(kafka_bootstrap, f"{topic_prefix}events", events)
    feeder.start()
    rng = random.Random(2026)
    kills = 0
    proc = counter_process(kafka_bootstrap, topic_prefix, logs_dir).start()
    proc.wait_ready(60)
    while kills < 3:
        time.sleep(rng.uniform(1.0, 3.0))
        proc.kill()
        kills += 1
        proc = counter_process(kafka_bootstrap, topic_prefix, logs_dir).start()
        proc.wait_ready(60)
    feeder.join(120)
    assert feeder.error is None, feeder.error
    outputs = consume_all(kafka_bootstrap, f"{topic_prefix}example.out", expect=N, timeout_s=180)
    assert proc.terminate() == 0
    assert kills == 3
    assert_exactly_once(outputs, events)
    # The kills really interrupted the stream: aborted transactions left records that a
    # read_uncommitted reader sees but a read_committed one does not.
    uncommitted = consume_all(
        kafka_bootstrap, f"{topic_prefix}example.out", expect=N, read_committed=False
    )
    assert len(uncommitted) >= len(outputs)


def test_second_instance_joining_mid_stream_keeps_exactly_once(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=4, names=[f"{topic_prefix}example.out"])
    events = make_events(N, seed=11)
    feeder = BackgroundProducer(kafka_bootstrap, f"{topic_prefix}events", events)
    first = counter_process(kafka_bootstrap, topic_prefix, logs_dir, instance="a").start()
    first.wait_ready(60)
    feeder.start()
    time.sleep(3)
    second = counter_process(kafka_bootstrap, topic_prefix, logs_dir, instance="b").start()
    second.wait_ready(60)
    feeder.join(120)
    assert feeder.error is None, feeder.error
    outputs = consume_all(kafka_bootstrap, f"{topic_prefix}example.out", expect=N, timeout_s=180)
    assert first.terminate() == 0
    assert second.terminate() == 0
    assert_exactly_once(outputs, events)
    # Both instances did work: each log shows an assignment.
    for name in ("counter-a.log", "counter-b.log"):
        assert "assigned" in (logs_dir / name).read_text()
