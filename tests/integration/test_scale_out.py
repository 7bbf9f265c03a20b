"""Every service at N instances on the real broker: one added, one SIGKILLed, per service.

Three instances each of features, scorer, drift and performance share 4 partitions (each
with its own instance id, so its own transactional id). While events and labels flow, a
fourth instance of each joins its group; once every group has rebalanced (all four own an
input partition) one instance of each is SIGKILLed while it owns input partitions (for
drift and performance, the one that runs the merge stage); the groups rebalance again and
the survivors own every input partition. Then:

* features and predictions hold every accepted event exactly once;
* the drift alerts, streaming detectors (ADWIN, Page-Hinkley, spread) on, equal alert for
  alert, every field, those of a single drift instance that read the same features and
  predictions in a group of its own (never killed; its own windows and alerts topics).
  Stage 2 takes the streaming firings in event-time order across partitions, each held
  until every partition has read past it (docs/decisions/drift-aggregation.md), so which
  instance read which partition when does not change the alerts;
* the performance reports and SLO alerts equal those of one performance processor over
  every partition of the stored predictions and labels (what a single instance reports),
  each report exactly once.

The feed pauses at three quarters until the kills are done, so the kills always land
mid-stream (a quarter of the input comes after them).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from services.scorer.artifact import generate_keypair, load_private_key
from services.scorer.training import train_and_sign
from streamml.partitioner import PARTITIONER
from streamml.synthetic import generate_events
from tests.integration.runtime_support import CODEC
from tests.integration.test_performance_service import ENV as PERFORMANCE_ENV
from tests.integration.test_performance_service import _label, _prediction, by_key, reference
from tests.kafkatest import (
    ServiceProcess,
    consume_all,
    create_topics,
    free_port,
    produce,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.eos]

PARTITIONS = 4
N_EVENTS = 6000
INSTANCES = 3
DRIFT_ENV = {
    # Partitions here never idle: no window (and no streaming firing) is let go early.
    "STREAMML_DRIFT_TESTS__IDLE_WINDOWS": "1000",
    "STREAMML_DRIFT_TESTS__DETECTION_IDLE_WINDOWS": "1000",
    "STREAMML_DRIFT_STATE_KEY": "integration-test-key",
}
# What identifies a performance report: one per model route, segment, window and boundary.
MODEL = ("model_name", "model_version", "route")
REPORT_IDENTITY = (*MODEL, "segment_field", "segment_value", "window", "window_end")
HOUR = 3_600_000


@dataclass
class ServiceGroup:
    """N instances of one service in one consumer group, started and stopped together."""

    name: str
    bootstrap: str
    prefix: str
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    members: list[ServiceProcess] = field(default_factory=list)

    def start(self, instance: str, **env: str) -> ServiceProcess:
        """One more instance (its own instance id, so its own transactional id)."""
        port = free_port()
        env_prefix = f"STREAMML_{self.name.upper()}_"
        proc = ServiceProcess(
            ["-m", f"services.{self.name}"],
            {
                "STREAMML_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "STREAMML_KAFKA_TOPIC_PREFIX": self.prefix,
                f"{env_prefix}HTTP__PORT": str(port),
                f"{env_prefix}RUNTIME__INSTANCE_ID": instance,
                f"{env_prefix}RUNTIME__SESSION_TIMEOUT_MS": "6000",
                f"{env_prefix}RUNTIME__BATCH_MAX_RECORDS": "100",
                # The killed instance's open transaction blocks read_committed readers of its
                # partitions until the broker aborts it: 10 s here instead of the default 60 s.
                f"{env_prefix}RUNTIME__TRANSACTION_TIMEOUT_MS": "10000",
                **self.env,
                **env,
            },
            http_port=port,
            log_path=self.logs / f"{self.name}-{instance}.log",
        )
        self.members.append(proc.start())
        return proc

    def start_many(self, count: int) -> list[ServiceProcess]:
        return [self.start(f"{self.name[0]}{len(self.members)}") for _ in range(count)]

    def stop(self) -> None:
        for proc in self.members:
            proc.stop()


class Feeder(threading.Thread):
    """Produces events and their labels in event-time order, in paced chunks; stops at
    ``pause_at`` of the records until :meth:`resume` (the kills happen meanwhile)."""

    def __init__(self, bootstrap: str, prefix: str, events: list[dict[str, Any]],
                 labels: list[dict[str, Any]], chunks: int, pause_at: float) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.bootstrap, self.chunks = bootstrap, chunks
        merged = [(e["event_time"], 0, prefix + "events", "Event", e) for e in events]
        merged += [(v["labeled_at"], 1, prefix + "labels", "Label", v) for v in labels]
        merged.sort(key=lambda item: item[:2])
        self.records = [item[2:] for item in merged]
        self.events = len(events)
        self.pause_at = int(pause_at * len(self.records))
        self.resumed = threading.Event()
        self.sent = 0
        self.events_sent = 0
        self.error: BaseException | None = None

    def resume(self) -> None:
        self.resumed.set()

    def run(self) -> None:
        try:
            producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True,
                                 "linger.ms": 5, "partitioner": PARTITIONER})  # fmt: skip
            size = max(1, len(self.records) // self.chunks)
            for start in range(0, len(self.records), size):
                if start >= self.pause_at and not self.resumed.wait(300):
                    raise TimeoutError("the test never resumed the feed")
                chunk = self.records[start : start + size]
                for topic, schema, value in chunk:
                    producer.produce(topic, CODEC.encode(schema, value),
                                     value["entity_id"].encode())  # fmt: skip
                assert producer.flush(30) == 0, "records not delivered"
                self.sent += len(chunk)
                self.events_sent += sum(1 for _, schema, _ in chunk if schema == "Event")
                time.sleep(0.25)  # pacing, not waiting: input keeps arriving during the changes
        except BaseException as exc:
            self.error = exc


def _labels(events: list[tuple[dict[str, Any], int]], seed: int) -> list[dict[str, Any]]:
    """A label for most events, up to two event-time minutes after it; some sent twice,
    some corrected, some for no prediction at all (orphans)."""
    rng = random.Random(seed)
    labels = []
    for event, y in events:
        eid, entity, t = event["event_id"], event["entity_id"], int(event["event_time"])
        if rng.random() < 0.9:
            at = t + rng.randint(0, 120_000)
            labels.append(_label(eid, entity, at, y))
            if rng.random() < 0.05:
                labels.append(_label(eid, entity, at, y))  # a producer retry
            if rng.random() < 0.03:
                labels.append(_label(eid, entity, at + 30_000, 1 - y))  # a correction
        if rng.random() < 0.02:
            labels.append(_label(f"{eid}-orphan", entity, t, 1))
    return labels


def _owned(proc: ServiceProcess, topic: str) -> list[str]:
    try:
        _, status = proc.http("/readyz")
    except OSError:  # its HTTP server is not up yet
        return []
    return [p for p in status.get("partitions", []) if p.startswith(f"{topic}:")]


def _ids(messages: list[Any], schema: str) -> Counter[str]:
    return Counter(CODEC.decode(m.value(), schema)["event_id"] for m in messages)


def _create(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, n, 1) for t, n in topics.items()]).values():
        future.result(30)


def _consumed_all(bootstrap: str, group: str, topic: str, messages: list[Any]) -> bool:
    """The group has committed past the last record of ``messages`` on every partition."""
    ends: dict[int, int] = {}
    for m in messages:
        ends[m.partition()] = max(ends.get(m.partition(), -1), m.offset() + 1)
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                       "isolation.level": "read_committed"})  # fmt: skip
    try:
        committed = reader.committed([TopicPartition(topic, p) for p in ends], timeout=10)
    finally:
        reader.close()
    return all(tp.offset >= ends[tp.partition] for tp in committed)


def _drift_done(
    bootstrap: str, group: str, inputs: dict[str, list[Any]], windows_topic: str
) -> bool:
    """Both drift stages of ``group`` committed everything there is to read: every record
    of ``inputs`` (topic -> its records; stage 1), then every window report (stage 2)."""
    for topic, messages in inputs.items():
        if not _consumed_all(bootstrap, group, topic, messages):
            return False
    reports = consume_all(bootstrap, windows_topic, idle_s=1)
    return bool(reports) and _consumed_all(bootstrap, group, windows_topic, reports)


def _alerts(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [CODEC.decode(m.value(), "DriftAlert", topic=topic)
            for m in consume_all(bootstrap, topic, idle_s=2)]  # fmt: skip


def alert_view(alerts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Every field of every alert that is a function of the data, in a stable order."""
    view = [(a["alert_id"], a["state"], a["feature"], a["detector"], a["severity"], a["signal"],
             a["window_start"], a["window_end"], a["statistic"], a["records_seen"],
             a["first_offset"], a["last_offset"],
             tuple(sorted(a["details"].items()))) for a in alerts]  # fmt: skip
    return sorted(view, key=repr)


def _end_markers(bootstrap: str, prefix: str, end: int) -> None:
    """A prediction and a label per partition far past the last event: every performance
    watermark passes every label horizon, so every window is reported."""
    for p in range(PARTITIONS):
        entity = f"end-{p}"
        for topic, schema, value in (
            ("predictions", "Prediction",
             _prediction(entity, entity, end, 0.5, "rules", "0", "US")),
            ("predictions.shadow", "Prediction",
             _prediction(entity, entity, end, 0.5, "shadow", "3", "US")),
            ("labels", "Label", _label(entity, entity, end, 1)),
        ):  # fmt: skip
            produce(bootstrap, prefix + topic,
                    [(entity.encode(), CODEC.encode(schema, value), [])], partition=p)  # fmt: skip


def test_every_service_scaled_out_with_one_added_and_one_killed_equals_one_instance(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    private_key, public_key = generate_keypair(tmp_path / "keys")
    versions = train_and_sign(events=3000, seed=7, out=tmp_path / "models",
                              key=load_private_key(private_key))  # fmt: skip
    drift_env = {"STREAMML_DRIFT_REFERENCE_PATH": str(versions[0].path), **DRIFT_ENV}
    groups: dict[str, ServiceGroup] = {
        name: ServiceGroup(name, kafka_bootstrap, topic_prefix, logs_dir, env)
        for name, env in (
            ("features", {}),
            ("scorer", {
                "STREAMML_SCORER_MODEL_DIR": str(tmp_path / "models"),
                "STREAMML_SCORER_PUBLIC_KEY_PATH": str(public_key),
            }),
            ("drift", drift_env),
            ("performance", PERFORMANCE_ENV),
        )
    }  # fmt: skip
    # One drift instance in a group of its own (never killed, writing its own windows and
    # alerts topics) reads the same features and predictions: what one instance finds.
    _create(kafka_bootstrap, {f"{topic_prefix}drift.windows.single": 1,
                              f"{topic_prefix}drift.alerts.single": PARTITIONS})  # fmt: skip
    single = ServiceGroup("drift", kafka_bootstrap, topic_prefix, logs_dir, {
        **drift_env,
        "STREAMML_DRIFT_RUNTIME__GROUP_ID": f"{topic_prefix}drift-single",
        "STREAMML_DRIFT_WINDOWS_TOPIC": "drift.windows.single",
        "STREAMML_DRIFT_ALERTS_TOPIC": "drift.alerts.single",
    })  # fmt: skip
    inputs = {
        "features": f"{topic_prefix}events",
        "scorer": f"{topic_prefix}features",
        "drift": f"{topic_prefix}features",
        "performance": f"{topic_prefix}predictions",
    }
    # Where the merge stage runs: the instance owning partition 0 of the internal topic.
    merges = {"drift": f"{topic_prefix}drift.windows",
              "performance": f"{topic_prefix}performance.partials"}  # fmt: skip
    # ~20 event-time minutes (20 drift windows of 60 s); the data drifts halfway.
    labelled = list(generate_events(N_EVENTS, seed=31, n_entities=300, drift_at=N_EVENTS // 2))
    events = [e for e, _ in labelled]
    feeder = Feeder(kafka_bootstrap, topic_prefix, events, _labels(labelled, seed=3),
                    chunks=120, pause_at=0.75)  # fmt: skip
    added: dict[str, ServiceProcess] = {}
    killed: dict[str, tuple[ServiceProcess, list[str]]] = {}
    try:
        for group in groups.values():
            group.start_many(INSTANCES)
        single.start("single")
        for group in [*groups.values(), single]:
            for proc in group.members:
                proc.wait_ready(120)
        feeder.start()
        wait_until(lambda: feeder.sent >= len(feeder.records) // 6, 60, "a sixth is sent")
        for name, group in groups.items():
            added[name] = group.start_many(1)[0]

        # Every group rebalanced over four members: each owns an input partition.
        def all_members_own_inputs() -> bool:
            return all(_owned(proc, inputs[name]) for name, group in groups.items()
                       for proc in group.members)  # fmt: skip

        wait_until(all_members_own_inputs, 180, "all four instances of each service own input")
        for name, group in groups.items():
            # The merge stage's instance (drift, performance) where there is one.
            merger = [p for p in group.members if name in merges and _owned(p, merges[name])]
            victim = (merger or group.members[1:])[0]
            owned = _owned(victim, inputs[name])
            assert victim.alive and owned, f"{name}: the victim holds no partition"
            victim.kill()  # SIGKILL: its open transaction is aborted by the broker
            killed[name] = (victim, owned)
        events_at_kill = feeder.events_sent
        feeder.resume()
        assert events_at_kill < N_EVENTS, "the kill came after the feed ended; nothing was tested"
        for name, (victim, _) in killed.items():
            assert victim.proc is not None and victim.proc.returncode == -9, name

        # The survivors took the killed instances' partitions over: they own all of them.
        def survivors_own_everything() -> bool:
            for name, group in groups.items():
                owned = {p for proc in group.members if proc.alive
                         for p in _owned(proc, inputs[name])}  # fmt: skip
                if len(owned) != PARTITIONS:
                    return False
            return True

        wait_until(survivors_own_everything, 180, "the survivors own every input partition")

        feeder.join(300)
        assert feeder.error is None, feeder.error
        dead = consume_all(kafka_bootstrap, f"{topic_prefix}events.dlq", idle_s=2)
        expected = {e["event_id"] for e in events} - set(_ids(dead, "Event"))
        assert len(expected) > 0.9 * N_EVENTS
        predictions = consume_all(
            kafka_bootstrap, f"{topic_prefix}predictions", expect=len(expected), timeout_s=300
        )
        vectors = consume_all(kafka_bootstrap, f"{topic_prefix}features", idle_s=2)
        drift_inputs = {f"{topic_prefix}features": vectors,
                        f"{topic_prefix}predictions": predictions}  # fmt: skip
        wait_until(lambda: _drift_done(kafka_bootstrap, f"{topic_prefix}drift", drift_inputs,
                                       f"{topic_prefix}drift.windows"),
                   180, "drift read every record", interval_s=1.0)  # fmt: skip
        scaled = _alerts(kafka_bootstrap, f"{topic_prefix}drift.alerts")
        wait_until(lambda: _drift_done(kafka_bootstrap, f"{topic_prefix}drift-single",
                                       drift_inputs, f"{topic_prefix}drift.windows.single"),
                   180, "the single drift instance read every record", interval_s=1.0)  # fmt: skip
        alone = _alerts(kafka_bootstrap, f"{topic_prefix}drift.alerts.single")

        # Performance: push every watermark past the horizons, then compare with the pure
        # core over all partitions of what the broker stored.
        _end_markers(kafka_bootstrap, topic_prefix, max(e["event_time"] for e in events) + HOUR * 4)
        want_reports, want_alerts = reference(kafka_bootstrap, topic_prefix, PARTITIONS)
        assert len(want_reports) > 100, "too few performance reports to compare"
        consume_all(kafka_bootstrap, topic_prefix + "performance", expect=len(want_reports),
                    timeout_s=240)  # fmt: skip
        # Nothing more comes: no boundary is reported twice.
        reports = consume_all(kafka_bootstrap, topic_prefix + "performance", idle_s=3.0,
                              timeout_s=60)  # fmt: skip
        slo_alerts = consume_all(kafka_bootstrap, topic_prefix + "performance.alerts", idle_s=2.0)
    finally:
        feeder.resume()
        for group in [*groups.values(), single]:
            group.stop()
    for name, ids in (("features", _ids(vectors, "FeatureVector")),
                      ("predictions", _ids(predictions, "Prediction"))):  # fmt: skip
        duplicated = [eid for eid, n in ids.items() if n > 1]
        assert not duplicated, f"{name}: {len(duplicated)} duplicated, e.g. {duplicated[:3]}"
        assert set(ids) == expected, f"{name}: {len(expected - set(ids))} missing"

    assert any(a["state"] == "open" and a["signal"] == "drift" for a in alone), (
        "the single instance found no drift: the comparison would prove nothing"
    )
    assert any(a["detector"] in {"adwin", "page_hinkley", "page_hinkley_spread"} for a in alone), (
        "no streaming detector opened or fed an alert: they are not under test"
    )
    assert alert_view(scaled) == alert_view(alone)

    got_reports = [CODEC.decode(m.value(), "PerformanceReport") for m in reports]
    got_alerts = [CODEC.decode(m.value(), "SloAlert") for m in slo_alerts]
    counted = Counter(tuple(r[k] for k in REPORT_IDENTITY) for r in got_reports)
    duplicated_reports = [key for key, n in counted.items() if n > 1]
    assert not duplicated_reports, f"reports emitted twice, e.g. {duplicated_reports[:2]}"
    assert len(got_reports) == len(want_reports)
    assert by_key(got_reports, MODEL) == by_key(want_reports, MODEL)
    assert by_key(got_alerts, MODEL) == by_key(want_alerts, MODEL)
