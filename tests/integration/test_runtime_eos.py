"""Exactly-once proofs of the runtime: SIGKILL mid-stream, and a rebalance mid-stream."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from tests.integration.runtime_support import (
    BackgroundProducer,
    assert_exactly_once,
    counter_process,
    kill_mid_transaction,
    make_events,
    open_transaction_on,
    wait_for_open_transaction,
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
    proven = 0
    while kills < 3:
        time.sleep(rng.uniform(1.0, 3.0))
        # Timed to land while a transaction of the service holds data on the broker.
        proven += kill_mid_transaction(proc, kafka_bootstrap, f"{topic_prefix}example.out")
        kills += 1
        proc = counter_process(kafka_bootstrap, topic_prefix, logs_dir).start()
        proc.wait_ready(60)
    feeder.join(120)
    assert feeder.error is None, feeder.error
    outputs = consume_all(kafka_bootstrap, f"{topic_prefix}example.out", expect=N, timeout_s=180)
    assert proc.terminate() == 0
    assert kills == 3
    # At least one kill interrupted a transaction that had written output (the
    # abort path, not only the between-transactions path) ...
    assert proven >= 1, "no kill landed inside a transaction holding data"
    # ... and yet every input is in the committed output exactly once.
    assert_exactly_once(outputs, events)
    uncommitted = consume_all(
        kafka_bootstrap, f"{topic_prefix}example.out", expect=N, read_committed=False
    )
    assert len(uncommitted) > len(outputs)  # the aborted records are there, not visible


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


def test_a_frozen_instance_is_fenced_by_its_replacement_and_nothing_of_it_is_visible(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    out = f"{topic_prefix}example.out"
    create_topics(kafka_bootstrap, topic_prefix, partitions=2, names=[out])
    events = make_events(8000, seed=17)
    feeder = BackgroundProducer(kafka_bootstrap, f"{topic_prefix}events", events)
    feeder.start()
    frozen = counter_process(kafka_bootstrap, topic_prefix, logs_dir).start()
    frozen.wait_ready(60)
    assert frozen.proc is not None
    # Freeze it (SIGSTOP) while one of its transactions holds output on the broker.
    for _ in range(20):
        assert wait_for_open_transaction(kafka_bootstrap, out)
        frozen.proc.send_signal(signal.SIGSTOP)
        if open_transaction_on(kafka_bootstrap, out):
            break
        frozen.proc.send_signal(signal.SIGCONT)
    else:
        raise AssertionError("could not freeze the instance inside a transaction")
    (logs_dir / "replacement").mkdir()
    replacement = counter_process(kafka_bootstrap, topic_prefix, logs_dir / "replacement")
    replacement.start()  # the same instance id: its init_transactions fences the frozen one
    try:
        replacement.wait_ready(90)
        frozen.proc.send_signal(signal.SIGCONT)
        assert frozen.wait(90) == 0  # it wakes up fenced and exits cleanly
        assert "fenced" in (logs_dir / "counter-a.log").read_text()
        feeder.join(120)
        assert feeder.error is None, feeder.error
        outputs = consume_all(kafka_bootstrap, out, expect=len(events), timeout_s=180)
        assert_exactly_once(outputs, events)  # nothing of the frozen transaction is visible
        assert not open_transaction_on(kafka_bootstrap, out)
    finally:
        frozen.stop()
        assert replacement.terminate() == 0
