"""The performance service at N instances on the real broker: three instances in one group
over 4-partition predictions and labels, a fourth added and one SIGKILLed mid-stream; the
reports and SLO alerts equal one processor over all partitions, each exactly once
(docs/decisions/performance-scale-out.md)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from streamml.partitioner import PARTITIONER, partition_for
from tests.integration.test_performance_service import (
    CODEC,
    ENV,
    _label,
    _prediction,
    by_key,
    generate,
    reference,
)
from tests.kafkatest import ServiceProcess, consume_all, create_topics, free_port, produce

pytestmark = [pytest.mark.integration, pytest.mark.eos]

PARTITIONS = 4
MODEL = ("model_name", "model_version", "route")
# What identifies a report: one per model route, segment, window kind and boundary.
IDENTITY = (*MODEL, "segment_field", "segment_value", "window", "window_end")


class Feeder(threading.Thread):
    """Produces predictions, shadow predictions and labels in event-time order, in paced
    chunks, while instances are added and killed; then the end markers."""

    def __init__(self, bootstrap: str, prefix: str, data: tuple[Any, ...], chunks: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.prefix, self.chunks = bootstrap, prefix, chunks
        preds, shadow, labels, self.end = data
        merged = [(v["event_time"], 0, "predictions", "Prediction", v) for v in preds]
        merged += [(v["event_time"], 1, "predictions.shadow", "Prediction", v) for v in shadow]
        merged += [(v["labeled_at"], 2, "labels", "Label", v) for v in labels]
        merged.sort(key=lambda item: item[:2])  # stable: each stream keeps its own order
        self.records = [item[2:] for item in merged]
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True,
                                 "linger.ms": 5, "partitioner": PARTITIONER})  # fmt: skip
            size = max(1, len(self.records) // self.chunks)
            for start in range(0, len(self.records), size):
                chunk = self.records[start : start + size]
                for topic, schema, v in chunk:
                    producer.produce(self.prefix + topic, CODEC.encode(schema, v),
                                     v["entity_id"].encode())  # fmt: skip
                assert producer.flush(30) == 0, "records not delivered"
                self.sent += len(chunk)
                time.sleep(0.3)  # pacing, not waiting: input keeps arriving during the changes
            for p in range(PARTITIONS):  # end markers push every stream past each horizon
                entity = f"end-{p}"
                marks = [
                    ("predictions", "Prediction",
                     _prediction(entity, entity, self.end, 0.5, "rules", "0", "US")),
                    ("predictions.shadow", "Prediction",
                     _prediction(entity, entity, self.end, 0.5, "shadow", "3", "US")),
                    ("labels", "Label", _label(entity, entity, self.end, 1)),
                ]  # fmt: skip
                for topic, schema, value in marks:
                    produce(self.bootstrap, self.prefix + topic,
                            [(entity.encode(), CODEC.encode(schema, value), [])],
                            partition=p)  # fmt: skip
        except BaseException as exc:
            self.error = exc


def _instance(bootstrap: str, prefix: str, logs: Path, name: str) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        ["-m", "services.performance"],
        {
            "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMML_PERFORMANCE_HTTP__PORT": str(port),
            "STREAMML_PERFORMANCE_RUNTIME__INSTANCE_ID": name,
            "STREAMML_PERFORMANCE_RUNTIME__BATCH_MAX_RECORDS": "25",
            "STREAMML_PERFORMANCE_RUNTIME__SESSION_TIMEOUT_MS": "6000",
            # The killed instance's open transaction holds read_committed readers of its
            # partitions back until the broker aborts it: 10 s instead of 60 s.
            "STREAMML_PERFORMANCE_RUNTIME__TRANSACTION_TIMEOUT_MS": "10000",
            **ENV,
        },
        http_port=port,
        log_path=logs / f"performance-{name}.log",
    )


def _owned(proc: ServiceProcess) -> list[str]:
    try:
        _, status = proc.http("/readyz")
    except OSError:
        return []
    return [p for p in status.get("partitions", []) if ".predictions:" in p]


def _merges(proc: ServiceProcess) -> bool:
    try:
        _, status = proc.http("/readyz")
    except OSError:
        return False
    return any(p.endswith(".performance.partials:0") for p in status.get("partitions", []))


def _wait(condition: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_three_instances_one_added_one_killed_report_what_one_instance_reports(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    feeder = Feeder(kafka_bootstrap, topic_prefix, generate(events=1500, seed=13), chunks=80)
    total = len(feeder.records)
    procs = [_instance(kafka_bootstrap, topic_prefix, logs_dir, f"i{i}").start() for i in range(3)]
    try:
        for proc in procs:
            proc.wait_ready(120)
        feeder.start()
        _wait(lambda: feeder.sent >= 0.25 * total, "a quarter of the input")
        added = _instance(kafka_bootstrap, topic_prefix, logs_dir, "i3").start()
        procs.append(added)
        added.wait_ready(120)
        _wait(lambda: bool(_owned(added)), "the added instance to own an input partition")
        # Kill the instance that merges (owns partials partition 0), input still arriving.
        _wait(lambda: feeder.sent >= 0.5 * total, "half of the input")
        _wait(lambda: any(_merges(p) for p in procs), "an instance owning partials:0")
        merger = next(p for p in procs if _merges(p))
        merger.kill()
        assert feeder.sent < total, "the kill came after the feed ended; nothing was tested"
        feeder.join(300)
        assert feeder.error is None, feeder.error
        # The producers' partitioner is Kafka's default (murmur2): a label lands where its
        # prediction does, whichever client wrote either.
        stored = consume_all(kafka_bootstrap, topic_prefix + "labels", idle_s=1.0)
        keyed = [m for m in stored if not m.key().startswith(b"end-")]  # end markers: pinned
        assert len(keyed) > 1000
        assert all(m.partition() == partition_for(m.key(), PARTITIONS) for m in keyed)
        want_reports, want_alerts = reference(kafka_bootstrap, topic_prefix, PARTITIONS)
        assert len(want_reports) > 1000 and want_alerts  # the run has substance
        reports = consume_all(kafka_bootstrap, topic_prefix + "performance",
                              expect=len(want_reports), timeout_s=240)  # fmt: skip
        # Nothing more comes: no boundary is reported twice.
        reports = consume_all(kafka_bootstrap, topic_prefix + "performance", idle_s=5.0,
                              timeout_s=60)  # fmt: skip
        alerts = consume_all(kafka_bootstrap, topic_prefix + "performance.alerts", idle_s=2.0)
    finally:
        for proc in procs:
            proc.stop()
    got_reports = [CODEC.decode(m.value(), "PerformanceReport") for m in reports]
    got_alerts = [CODEC.decode(m.value(), "SloAlert") for m in alerts]
    counted = Counter(tuple(r[k] for k in IDENTITY) for r in got_reports)
    duplicated = [key for key, n in counted.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} reports emitted twice, e.g. {duplicated[:2]}"
    assert len(got_reports) == len(want_reports)
    assert by_key(got_reports, MODEL) == by_key(want_reports, MODEL)
    assert by_key(got_alerts, MODEL) == by_key(want_alerts, MODEL)
