"""The broker goes away for ~10 s mid-stream; the processor recovers by itself, exactly once.

Then it goes away again while the processor is idle: /readyz says so, /healthz stays up, and
the first transaction after it runs on a new producer instead of blocking in librdkafka.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streamml.broker import LocalBroker
from tests.integration.runtime_support import (
    BackgroundProducer,
    assert_exactly_once,
    counter_process,
    make_events,
)
from tests.kafkatest import ServiceProcess, consume_all, create_topics, metric_total, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
OUTAGE_S = 10.0


def _not_ready_reason(proc: ServiceProcess) -> str | None:
    code, body = proc.http("/readyz")
    return str(body.get("reason")) if code == 503 else None


def test_broker_restart_mid_stream(tmp_path: Path, topic_prefix: str, logs_dir: Path) -> None:
    # A broker of its own: this test stops it, which must not disturb other tests.
    broker = LocalBroker(run_dir=tmp_path / "kafka", port=0)
    broker.start()
    proc: ServiceProcess | None = None
    try:
        bootstrap = broker.bootstrap
        create_topics(bootstrap, topic_prefix, partitions=2, names=[f"{topic_prefix}example.out"])
        events = make_events(20_000, seed=5)
        first, after_idle_outage = events[:18_000], events[18_000:]
        feeder = BackgroundProducer(bootstrap, f"{topic_prefix}events", first, chunks=60)
        proc = counter_process(
            bootstrap, topic_prefix, logs_dir,
            extra_env={"STREAMML_EXAMPLE_RUNTIME__MAX_ATTEMPTS": "30"},
        ).start()  # fmt: skip
        proc.wait_ready(60)
        feeder.start()
        # The broker goes away mid-stream: once the processor has committed input.
        wait_until(lambda: metric_total(proc, "streamml_records_in_total") > 0, 120,
                   "the processor committed a batch")  # fmt: skip
        broker.stop()
        time.sleep(OUTAGE_S)  # the fault itself: how long the broker stays away (not a wait)
        assert proc.alive, "the processor died while the broker was down"
        assert proc.http("/healthz")[0] == 200  # waiting for the broker is not death
        broker.start()
        feeder.join(180)
        assert feeder.error is None, feeder.error
        consume_all(bootstrap, f"{topic_prefix}example.out", expect=18_000, timeout_s=240)
        assert proc.alive, "the processor did not survive the broker restart"
        proc.wait_ready(60)

        # Idle now (no batch in flight, so no fault of a batch to report): the broker goes
        # away again. The service says it is not ready and why, stays alive, and is ready
        # again once the broker is back, with no record to tell it so.
        broker.stop()
        reason = wait_until(
            lambda: _not_ready_reason(proc), 60, "/readyz is 503 while the broker is down"
        )
        assert "no broker reachable" in reason, reason
        assert proc.http("/healthz")[0] == 200
        log_path = logs_dir / "counter-a.log"
        seen_before = len(log_path.read_text())
        broker.start()
        proc.wait_ready(60)
        # The first transaction after the outage renews the producer (librdkafka can block
        # in send_offsets_to_transaction with the coordinator it knew before, #5456/#5511).
        feeder = BackgroundProducer(bootstrap, f"{topic_prefix}events", after_idle_outage, chunks=4)
        feeder.start()
        feeder.join(120)
        assert feeder.error is None, feeder.error
        outputs = consume_all(bootstrap, f"{topic_prefix}example.out", expect=20_000, timeout_s=240)
        since = log_path.read_text()[seen_before:]
        assert "a broker was unreachable since the last transaction; replacing" in since, since
        assert "producer is stuck" not in since, since
        # The replaced producer had no call in flight: it is let go at once, not kept.
        assert "replaced transactional producers released" in since, since
        assert proc.terminate() == 0
        assert_exactly_once(outputs, events)
        # A broker outage is an infrastructure fault: never a dead letter, never a traceback.
        assert consume_all(bootstrap, f"{topic_prefix}events.dlq", idle_s=2.0) == []
        log = log_path.read_text()
        assert "Traceback" not in log
        assert [line for line in log.splitlines() if "level=error" in line] == []
    finally:
        if proc is not None:
            proc.stop()  # a failed assertion must not leave the processor running
        broker.stop()
