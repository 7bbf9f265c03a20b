"""Shared pieces of the runtime's integration tests: the counter app and its checks."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from confluent_kafka import Message

from streamml.codec import AvroCodec
from streamml.synthetic import generate_events
from tests.kafkatest import ServiceProcess, free_port, produce

CODEC = AvroCodec()


def make_events(n: int, seed: int = 7, n_entities: int = 300) -> list[dict]:
    return [event for event, _ in generate_events(n, seed=seed, n_entities=n_entities)]


def encoded(events: list[dict]) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    return [(e["entity_id"].encode(), CODEC.encode("Event", e), []) for e in events]


def counter_process(
    bootstrap: str,
    prefix: str,
    logs: Path,
    *,
    instance: str = "a",
    batch: int = 200,
    extra_env: dict[str, str] | None = None,
) -> ServiceProcess:
    port = free_port()
    env = {
        "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMML_EXAMPLE_HTTP__PORT": str(port),
        "STREAMML_EXAMPLE_RUNTIME__INSTANCE_ID": instance,
        "STREAMML_EXAMPLE_RUNTIME__BATCH_MAX_RECORDS": str(batch),
        "STREAMML_EXAMPLE_RUNTIME__SESSION_TIMEOUT_MS": "6000",
        **(extra_env or {}),
    }
    return ServiceProcess(
        ["-m", "streamml.examples", "counter"],
        env,
        http_port=port,
        log_path=logs / f"counter-{instance}.log",
    )


class BackgroundProducer(threading.Thread):
    """Produces events at a steady pace while the test kills things."""

    def __init__(self, bootstrap: str, topic: str, events: list[dict], chunks: int = 40) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events, self.chunks = bootstrap, topic, events, chunks
        self.error: BaseException | None = None
        self.sent = 0
        """How many events are on the topic so far (a kill test reads it at the kill)."""

    def run(self) -> None:
        try:
            size = max(1, len(self.events) // self.chunks)
            for start in range(0, len(self.events), size):
                chunk = self.events[start : start + size]
                produce(self.bootstrap, self.topic, encoded(chunk))
                self.sent += len(chunk)
                time.sleep(0.25)  # pacing, not waiting: input keeps arriving during the kills
        except BaseException as exc:
            self.error = exc


def assert_exactly_once(outputs: list[Message], events: list[dict]) -> None:
    """Every input event appears once in the output, and the per-entity counts run 1..n."""
    decoded = [CODEC.decode(m.value(), "Label") for m in outputs]
    seen = Counter(d["event_id"] for d in decoded)
    duplicates = [eid for eid, n in seen.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} duplicated event ids, e.g. {duplicates[:3]}"
    expected_ids = {e["event_id"] for e in events}
    missing = expected_ids - set(seen)
    assert not missing, f"{len(missing)} events missing from the output"
    assert set(seen) == expected_ids
    counts: dict[str, list[int]] = defaultdict(list)
    for d in decoded:
        counts[d["entity_id"]].append(d["label"])
    per_entity = Counter(e["entity_id"] for e in events)
    for entity, values in counts.items():
        assert sorted(values) == list(range(1, per_entity[entity] + 1)), (
            f"entity {entity}: counts {sorted(values)[:10]}... are not 1..{per_entity[entity]}"
        )


def random_pause(rng: random.Random, low: float, high: float) -> None:
    time.sleep(rng.uniform(low, high))


class OutputWatch:
    """Whether a transaction holds records on ``topic``: its high watermark is above its
    last stable offset on some partition (read_uncommitted end > read_committed end)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        partitions = self._admin.list_topics(topic, timeout=10).topics[topic].partitions
        self._request = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}

    def open_transaction(self) -> bool:
        from confluent_kafka import IsolationLevel

        # Both ends asked at once, so the two answers describe (nearly) the same moment.
        stable, high = (
            self._admin.list_offsets(self._request, isolation_level=level, request_timeout=10)
            for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)
        )
        stable_end = {tp.partition: f.result().offset for tp, f in stable.items()}
        high_end = {tp.partition: f.result().offset for tp, f in high.items()}
        return any(high_end[p] > stable_end[p] for p in high_end)


def open_transaction_on(bootstrap: str, topic: str) -> bool:
    return OutputWatch(bootstrap, topic).open_transaction()


def wait_for_open_transaction(bootstrap: str, topic: str, timeout_s: float = 60.0) -> bool:
    watch = OutputWatch(bootstrap, topic)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if watch.open_transaction():
            return True
    return False


def kill_mid_transaction(
    proc: ServiceProcess, bootstrap: str, topic: str, timeout_s: float = 60.0
) -> bool:
    """SIGKILL ``proc`` as soon as one of its transactions holds records on ``topic``.

    Returns whether the kill is proven to have landed inside that transaction: after the
    kill, nothing can commit it, so the topic's last stable offset is still below its high
    watermark. (The service is the only writer of ``topic``.)
    """
    watch = OutputWatch(bootstrap, topic)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not watch.open_transaction():
        pass
    proc.kill()
    return watch.open_transaction()


def freeze_kill_in_transaction(
    proc: ServiceProcess, bootstrap: str, topic: str, timeout_s: float = 30.0
) -> bool:
    """SIGKILL ``proc`` while it is frozen inside a transaction holding records on ``topic``.

    A service whose transactions are open for milliseconds (the scorer) is rarely caught
    open by polling the broker from outside. So freeze it (SIGSTOP: librdkafka's threads
    stop too, nothing can commit) at random moments, ask the broker whether ``topic``
    holds uncommitted records (high watermark above the last stable offset), and kill it
    while frozen when it does; otherwise let it run a few milliseconds and try again.
    Returns whether the kill is proven to have landed inside such a transaction; after
    ``timeout_s`` without catching one it kills anyway and returns False. (The service
    must be the only writer of ``topic``.)
    """
    assert proc.proc is not None
    watch = OutputWatch(bootstrap, topic)
    rng = random.Random(len(topic))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.proc.send_signal(signal.SIGSTOP)
        if watch.open_transaction():
            proc.kill()
            return watch.open_transaction()
        proc.proc.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.0, 0.03))
    proc.kill()
    return False
