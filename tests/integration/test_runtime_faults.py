"""The fault matrix of the runtime, on the real broker: infrastructure faults are never dead
letters, a bad deployment trips the dead-letter circuit, restore counts as life, and two
instances with default settings share one host.

Every case checks: no valid record in the dead-letter topic, nothing lost and nothing
duplicated after recovery, the readiness (and its reason), the exit code and the line.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from streamml.codec import AvroCodec
from streamml.runtime.clients import changelog_topic
from tests.integration.runtime_support import (
    BackgroundProducer,
    assert_exactly_once,
    counter_process,
    encoded,
    kill_mid_transaction,
    make_events,
)
from tests.kafkatest import ServiceProcess, consume_all, create_topics, free_port, produce
from tests.registry_double import FaultyRegistry

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def wait_for(condition, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def not_ready_because(proc: ServiceProcess, *words: str) -> dict | None:
    try:
        code, body = proc.http("/readyz")
    except OSError:
        return None
    reason = body.get("reason") or ""
    return body if code == 503 and all(w in reason for w in words) else None


def metric(proc: ServiceProcess, name: str) -> float:
    _, body = proc.http("/metrics")
    total = 0.0
    for line in body["text"].splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def error_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "level=error" in line]


def dead_letters(bootstrap: str, topic: str) -> list:
    return consume_all(bootstrap, topic, idle_s=3.0, timeout_s=30)


@pytest.mark.dlq
def test_a_processor_raising_on_every_record_trips_the_circuit_with_no_dead_letter(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2, names=[f"{topic_prefix}example.out"])
    events = make_events(1200, seed=21, n_entities=80)
    produce(kafka_bootstrap, f"{topic_prefix}events", encoded(events))
    group = f"{topic_prefix}example"
    # A full batch (500) waits for records to arrive, so the circuit judges 500 at once.
    env = {
        "STREAMML_EXAMPLE_RUNTIME__GROUP_ID": group,
        "STREAMML_EXAMPLE_RUNTIME__BATCH_MAX_MS": "3000",
    }
    port = free_port()
    broken = ServiceProcess(
        ["-m", "streamml.examples", "broken"],
        {
            "STREAMML_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STREAMML_KAFKA_TOPIC_PREFIX": topic_prefix,
            "STREAMML_EXAMPLE_HTTP__PORT": str(port),
            "STREAMML_EXAMPLE_RUNTIME__BATCH_MAX_RECORDS": "500",
            **env,
        },
        http_port=port,
        log_path=logs_dir / "broken.log",
    ).start()
    try:
        body = wait_for(
            lambda: not_ready_because(broken, "halted", "dead-letter share"), 90, "the trip"
        )
        assert "RuntimeError x" in body["reason"], body  # the top error classes
        assert broken.http("/healthz")[0] == 200 and broken.alive
        assert metric(broken, "streamml_dead_letter_circuit_trips_total") == 1
        assert metric(broken, "streamml_halted") == 1
        assert dead_letters(kafka_bootstrap, f"{topic_prefix}events.dlq") == []
        # The operator resumes; the deployment is still broken: it trips again, still clean.
        assert broken.http("/resume", method="POST")[0] == 200
        wait_for(lambda: metric(broken, "streamml_dead_letter_circuit_trips_total") == 2, 90,
                 "the second trip")  # fmt: skip
        assert not_ready_because(broken, "halted", "dead-letter share")
        lines = [line for line in error_lines(logs_dir / "broken.log") if "HALTED" in line]
        assert len(lines) == 2 and "RuntimeError x" in lines[0], lines
    finally:
        assert broken.terminate() == 0
    # The fixed deployment (same group) processes every record exactly once.
    fixed = counter_process(kafka_bootstrap, topic_prefix, logs_dir, extra_env=env).start()
    try:
        outputs = consume_all(kafka_bootstrap, f"{topic_prefix}example.out", expect=len(events))
        assert_exactly_once(outputs, events)
        assert dead_letters(kafka_bootstrap, f"{topic_prefix}events.dlq") == []
        fixed.wait_ready(30)
    finally:
        assert fixed.terminate() == 0


@pytest.mark.registry
def test_registry_outage_is_retried_with_no_dead_letter_and_recovers(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2, names=[f"{topic_prefix}example.out"])
    events = make_events(400, seed=5, n_entities=40)
    with FaultyRegistry("ok") as registry:
        writer = AvroCodec(registry_url=registry.url)
        topic = f"{topic_prefix}events"
        # Registry wire format: the service must look the writer schema up (read side).
        produce(
            kafka_bootstrap, topic,
            [(e["entity_id"].encode(), writer.encode("Event", e, topic=topic), []) for e in events],
        )  # fmt: skip
        registry.mode = "unavailable"
        proc = counter_process(
            kafka_bootstrap, topic_prefix, logs_dir,
            extra_env={
                "STREAMML_KAFKA_SCHEMA_REGISTRY_URL": registry.url,
                "STREAMML_EXAMPLE_RUNTIME__MAX_ATTEMPTS": "1000",
                "STREAMML_EXAMPLE_RUNTIME__BACKOFF_MAX_S": "1",
            },
        ).start()  # fmt: skip
        try:
            body = wait_for(
                lambda: not_ready_because(proc, "infrastructure fault", "schema_registry"),
                90,
                "readiness 503 naming the registry",
            )
            assert "unavailable" in body["reason"], body
            wait_for(lambda: metric(proc, "streamml_infrastructure_faults_total") >= 2, 60,
                     "a second failed attempt")  # fmt: skip
            assert proc.alive and proc.http("/healthz")[0] == 200
            assert dead_letters(kafka_bootstrap, f"{topic}.dlq") == []
            assert consume_all(kafka_bootstrap, f"{topic_prefix}example.out", idle_s=1) == []
            registry.mode = "ok"
            outputs = consume_all(
                kafka_bootstrap, f"{topic_prefix}example.out", expect=len(events), timeout_s=120
            )
            proc.wait_ready(60)
            assert dead_letters(kafka_bootstrap, f"{topic}.dlq") == []
            assert all(m.value()[:1] == b"\x00" for m in outputs)  # registry wire format
            reader = AvroCodec(registry_url=registry.url)
            ids = sorted(reader.decode(m.value(), "Label")["event_id"] for m in outputs)
            assert ids == sorted(e["event_id"] for e in events)  # none lost, none twice
        finally:
            assert proc.terminate() == 0
        log = (logs_dir / "counter-a.log").read_text()
        assert "Traceback" not in log
        assert "batch aborted after an infrastructure fault (schema_registry_unavailable" in log


@pytest.mark.registry
def test_registry_refusing_the_schema_exits_2_with_one_line(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1, names=[f"{topic_prefix}example.out"])
    events = make_events(50, seed=6)
    produce(kafka_bootstrap, f"{topic_prefix}events", encoded(events))
    with FaultyRegistry("refuse") as registry:
        proc = counter_process(
            kafka_bootstrap, topic_prefix, logs_dir,
            extra_env={"STREAMML_KAFKA_SCHEMA_REGISTRY_URL": registry.url},
        ).start()  # fmt: skip
        assert proc.wait(90) == 2
        proc.stop()
        assert any(code == 409 for _, _, code in registry.requests)
    lines = error_lines(logs_dir / "counter-a.log")
    assert len(lines) == 1, lines
    assert re.search(r"schema registry refused .*409", lines[0]), lines
    assert "compatib" in lines[0]
    assert "Traceback" not in (logs_dir / "counter-a.log").read_text()
    assert dead_letters(kafka_bootstrap, f"{topic_prefix}events.dlq") == []
    assert consume_all(kafka_bootstrap, f"{topic_prefix}example.out", idle_s=1) == []


@pytest.mark.registry
def test_a_registry_that_stays_down_ends_in_exit_1_after_the_configured_attempts(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1, names=[f"{topic_prefix}example.out"])
    produce(kafka_bootstrap, f"{topic_prefix}events", encoded(make_events(20, seed=8)))
    with FaultyRegistry("hang", hang_s=12) as registry:  # past the client's 10 s timeout
        proc = counter_process(
            kafka_bootstrap, topic_prefix, logs_dir,
            extra_env={
                "STREAMML_KAFKA_SCHEMA_REGISTRY_URL": registry.url,
                "STREAMML_EXAMPLE_RUNTIME__MAX_ATTEMPTS": "2",
            },
        ).start()  # fmt: skip
        assert proc.wait(240) == 1
        proc.stop()
    lines = error_lines(logs_dir / "counter-a.log")
    assert len(lines) == 1, lines
    assert "giving up after 2 attempts (schema_registry_unavailable)" in lines[0], lines
    assert dead_letters(kafka_bootstrap, f"{topic_prefix}events.dlq") == []


def test_a_restore_longer_than_the_liveness_limit_stays_alive_and_not_ready(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1, names=[f"{topic_prefix}example.out"])
    changelog = f"{topic_prefix}example-counter-counts-changelog"
    create_topics(kafka_bootstrap, topic_prefix, partitions=1, names=[changelog])
    filler = ((f"restored-{i}".encode(), b"\x00" * 8, []) for i in range(200_000))
    produce(kafka_bootstrap, changelog, filler, partition=0)
    events = make_events(300, seed=9, n_entities=30)
    produce(kafka_bootstrap, f"{topic_prefix}events", encoded(events))
    idle_limit = 1.0
    proc = counter_process(
        kafka_bootstrap, topic_prefix, logs_dir,
        extra_env={"STREAMML_EXAMPLE_RUNTIME__LIVENESS_IDLE_S": str(idle_limit)},
    ).start()  # fmt: skip
    try:
        health: list[int] = []
        restoring_seen: list[float] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.alive
            try:
                code, body = proc.http("/readyz")
                health.append(proc.http("/healthz")[0])
            except OSError:
                time.sleep(0.05)
                continue
            if code == 200:
                break
            if body.get("reason") == "restoring state":
                restoring_seen.append(time.monotonic())
            time.sleep(0.05)
        else:
            raise AssertionError("never ready")
        # The premise: restore was observed for longer than the idle limit.
        assert restoring_seen and restoring_seen[-1] - restoring_seen[0] > idle_limit
        assert set(health) == {200}, health
        outputs = consume_all(kafka_bootstrap, f"{topic_prefix}example.out", expect=len(events))
        assert_exactly_once(outputs, events)
        log = (logs_dir / "counter-a.log").read_text()
        assert "restored 200000 changelog records" in log
    finally:
        assert proc.terminate() == 0


def test_two_instances_with_default_settings_share_one_host(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2, names=[f"{topic_prefix}example.out"])
    events = make_events(2000, seed=12, n_entities=100)

    def instance(name: str) -> ServiceProcess:
        port = free_port()
        return ServiceProcess(
            ["-m", "streamml.examples", "counter"],
            {   # no INSTANCE_ID: the default; a slot directory of the test's own
                "STREAMML_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "STREAMML_KAFKA_TOPIC_PREFIX": topic_prefix,
                "STREAMML_EXAMPLE_HTTP__PORT": str(port),
                "STREAMML_EXAMPLE_RUNTIME__SESSION_TIMEOUT_MS": "6000",
                "STREAMML_SLOT_DIR": str(tmp_path / "slots"),
            },
            http_port=port,
            log_path=logs_dir / f"default-{name}.log",
        ).start()  # fmt: skip

    first, second = instance("1"), instance("2")
    try:
        produce(kafka_bootstrap, f"{topic_prefix}events", encoded(events[:1000]))
        first.wait_ready(60)
        second.wait_ready(60)
        wait_for(
            lambda: all(p.http("/readyz")[1]["partitions"] for p in (first, second)),
            60, "both instances owning a partition",
        )  # fmt: skip
        produce(kafka_bootstrap, f"{topic_prefix}events", encoded(events[1000:]))
        outputs = consume_all(kafka_bootstrap, f"{topic_prefix}example.out", expect=len(events))
        assert first.alive and second.alive
        assert_exactly_once(outputs, events)
    finally:
        codes = [first.terminate(), second.terminate()]
    assert codes == [0, 0]
    ids = set()
    for name in ("1", "2"):
        log = (logs_dir / f"default-{name}.log").read_text()
        assert "fenced" not in log
        ids |= set(re.findall(r"transactional_id=(\S+)", log))
    assert len(ids) == 2, ids


@pytest.mark.eos
def test_a_new_transactional_id_says_it_waits_for_the_killed_instances_transaction(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    out = f"{topic_prefix}example.out"
    create_topics(kafka_bootstrap, topic_prefix, partitions=2, names=[out])
    events = make_events(6000, seed=31)
    feeder = BackgroundProducer(kafka_bootstrap, f"{topic_prefix}events", events)
    feeder.start()
    timeout_env = {"STREAMML_EXAMPLE_RUNTIME__TRANSACTION_TIMEOUT_MS": "15000"}
    # A pod killed mid-transaction, in one that holds state changes: its changelog's last
    # stable offset stays behind. (One holding output records alone, killed before its
    # changelog records and offsets reached the broker, leaves its successor nothing to
    # wait for: the CI run at c9595e5 caught such a kill, and no wait was reported.)
    changelog = changelog_topic(f"{topic_prefix}example-counter", "counts")
    for _ in range(5):
        killed = counter_process(
            kafka_bootstrap, topic_prefix, logs_dir, instance="pod-1", extra_env=timeout_env
        ).start()
        killed.wait_ready(60)
        if kill_mid_transaction(killed, kafka_bootstrap, changelog):
            break
    else:
        raise AssertionError("no kill landed inside a transaction")
    # Its replacement has another transactional id (a new pod name): it must wait for the
    # open transaction to time out, and say so.
    replacement = counter_process(
        kafka_bootstrap, topic_prefix, logs_dir, instance="pod-2", extra_env=timeout_env
    ).start()
    try:
        body = wait_for(
            lambda: not_ready_because(replacement, "transaction", "to end", "timeout_ms"),
            60, "readiness saying it waits for the earlier transaction",
        )  # fmt: skip
        assert "15000" in body["reason"]
        replacement.wait_ready(90)
        feeder.join(120)
        assert feeder.error is None, feeder.error
        outputs = consume_all(kafka_bootstrap, out, expect=len(events), timeout_s=180)
        assert_exactly_once(outputs, events)
    finally:
        assert replacement.terminate() == 0
    log = (logs_dir / "counter-pod-2.log").read_text()
    assert re.search(r"level=warning .*waiting for an? (earlier|open) transaction", log), log[
        -2000:
    ]
