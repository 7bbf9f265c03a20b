"""The performance service on the real broker: SIGKILLed three times mid-stream, it emits the
same reports, alerts and dead letters as an uninterrupted run, and both equal the pure core
run over the very records the broker stored."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from services.performance.processor import PerformanceProcessor
from services.performance.settings import PerformanceSettings
from streamml.codec import AvroCodec
from streamml.processor import Record
from streamml.settings import KafkaSettings
from streamml.state import State
from tests.kafkatest import (
    ServiceProcess,
    consume_all,
    create_topics,
    free_port,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration

CODEC = AvroCodec()
PARTITIONS = 2
MIN = 60_000
HOUR = 60 * MIN
T0 = 1_795_000_000_000
INTERVAL = 5 * MIN
SETTINGS: dict[str, Any] = {
    "label_horizon": timedelta(hours=2),
    "early_label_grace": timedelta(minutes=10),
    "late_label_memory": timedelta(hours=1),
    "allowed_lateness": timedelta(0),
    "report_interval": timedelta(milliseconds=INTERVAL),
    "window_kind": "count",
    "window_size": 200,
    "segment_fields": ["country"],
    "segment_max_values": 3,
    "slo_min": {"roc_auc": 0.9},
    "slo_consecutive_windows": 2,
    "slo_min_labeled": 20,
    "canary_margin": 0.0,
    "shadow_required": True,
}
ENV = {
    "STREAMML_PERFORMANCE_LABEL_HORIZON": "7200",
    "STREAMML_PERFORMANCE_EARLY_LABEL_GRACE": "600",
    "STREAMML_PERFORMANCE_LATE_LABEL_MEMORY": "3600",
    "STREAMML_PERFORMANCE_ALLOWED_LATENESS": "0",
    "STREAMML_PERFORMANCE_REPORT_INTERVAL": str(INTERVAL // 1000),
    "STREAMML_PERFORMANCE_WINDOW_KIND": "count",
    "STREAMML_PERFORMANCE_WINDOW_SIZE": "200",
    "STREAMML_PERFORMANCE_SEGMENT_FIELDS": '["country"]',
    "STREAMML_PERFORMANCE_SEGMENT_MAX_VALUES": "3",
    "STREAMML_PERFORMANCE_SLO_MIN": '{"roc_auc": 0.9}',
    "STREAMML_PERFORMANCE_SLO_CONSECUTIVE_WINDOWS": "2",
    "STREAMML_PERFORMANCE_SLO_MIN_LABELED": "20",
    "STREAMML_PERFORMANCE_CANARY_MARGIN": "0.0",
    "STREAMML_PERFORMANCE_SHADOW_REQUIRED": "true",
}
Produced = tuple[bytes, bytes, list[tuple[str, bytes]]]


def _prediction(eid: str, entity: str, t: int, score: float, route: str, version: str,
                country: str) -> dict[str, Any]:  # fmt: skip
    return {
        "event_id": eid, "entity_id": entity, "event_time": t, "scored_at": t,
        "model_name": "fraud", "model_version": version, "score": score, "threshold": 0.5,
        "decision": score >= 0.5, "route": route, "fallback_reason": None, "latency_ms": 1.0,
        "feature_set_hash": "h", "features_computed_at": None, "segments": {"country": country},
    }  # fmt: skip


def _label(eid: str, entity: str, a: int, y: int) -> dict[str, Any]:
    return {"event_id": eid, "entity_id": entity, "label": y, "labeled_at": a,
            "source": "chargeback"}  # fmt: skip


def generate(events: int = 1500, seed: int = 5) -> tuple[list[Any], list[Any], list[Any], int]:
    """Time-ordered predictions, shadow predictions and labels with every join path."""
    rng = random.Random(seed)
    preds: list[tuple[int, dict[str, Any]]] = []
    shadow: list[tuple[int, dict[str, Any]]] = []
    labels: list[tuple[int, dict[str, Any]]] = []
    t = T0
    for i in range(events):
        t += rng.randint(1000, 7000)
        eid, entity = f"e{i}", f"c{rng.randrange(300)}"
        score = round(rng.random(), 3)
        y = int(rng.random() < 0.15 + 0.7 * score)
        country = rng.choice(["US", "GB", "FR", "DE", "IT"])
        route = "canary" if rng.random() < 0.2 else "primary"
        version = "2" if route == "canary" else "1"
        preds.append((t, _prediction(eid, entity, t, score, route, version, country)))
        if rng.random() < 0.05:  # producer retry
            preds.append((t, _prediction(eid, entity, t, score, route, version, country)))
        if rng.random() < 0.3:
            s2 = round(min(1.0, max(0.0, score + rng.gauss(0, 0.2))), 3)
            shadow.append((t, _prediction(eid, entity, t, s2, "shadow", "3", country)))
        if rng.random() < 0.85:
            delay = rng.randint(0, 5000) if rng.random() < 0.15 else rng.randint(0, 40 * MIN)
            if rng.random() < 0.03:
                delay = 2 * HOUR + rng.randint(1, HOUR)  # too late
            a = t + delay
            labels.append((a, _label(eid, entity, a, y)))
            if rng.random() < 0.05:
                labels.append((a, _label(eid, entity, a, y)))  # duplicate
            if rng.random() < 0.06:
                a2 = a + rng.randint(1, 30 * MIN)
                labels.append((a2, _label(eid, entity, a2, 1 - y)))  # correction
        if rng.random() < 0.02:
            labels.append((t, _label(f"{eid}-orphan", entity, t, 1)))
    for items in (preds, shadow, labels):
        items.sort(key=lambda item: item[0])
    return [v for _, v in preds], [v for _, v in shadow], [v for _, v in labels], t + 4 * HOUR


def provision(
    bootstrap: str,
    prefix: str,
    data: tuple[list[Any], list[Any], list[Any], int],
    partitions: int = PARTITIONS,
    end_markers: bool = True,
) -> None:
    create_topics(bootstrap, prefix, partitions=partitions)
    preds, shadow, labels, end = data
    for topic, schema, values in (
        ("predictions", "Prediction", preds),
        ("predictions.shadow", "Prediction", shadow),
        ("labels", "Label", labels),
    ):
        encoded = [(v["entity_id"].encode(), CODEC.encode(schema, v), []) for v in values]
        produce(bootstrap, prefix + topic, encoded)
    if end_markers:
        produce_end_markers(bootstrap, prefix, end, partitions)


def produce_end_markers(
    bootstrap: str, prefix: str, end: int, partitions: int = PARTITIONS
) -> None:
    """End markers on every stream of every partition push the watermark past each horizon:
    until they are in, no report reaches the last boundary."""
    for p in range(partitions):
        entity = f"end-{p}"
        marks = [
            ("predictions", "Prediction",
             _prediction(f"end-{p}", entity, end, 0.5, "rules", "0", "US")),
            ("predictions.shadow", "Prediction",
             _prediction(f"end-{p}", entity, end, 0.5, "shadow", "3", "US")),
            ("labels", "Label", _label(f"end-{p}", entity, end, 1)),
        ]  # fmt: skip
        for topic, schema, value in marks:
            produce(bootstrap, prefix + topic,
                    [(entity.encode(), CODEC.encode(schema, value), [])], partition=p)  # fmt: skip


def service(bootstrap: str, prefix: str, logs: Path, name: str) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        ["-m", "services.performance"],
        {
            "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMML_PERFORMANCE_HTTP__PORT": str(port),
            "STREAMML_PERFORMANCE_RUNTIME__INSTANCE_ID": "a",
            "STREAMML_PERFORMANCE_RUNTIME__BATCH_MAX_RECORDS": "25",
            "STREAMML_PERFORMANCE_RUNTIME__SESSION_TIMEOUT_MS": "6000",
            **ENV,
        },
        http_port=port,
        log_path=logs / f"{name}.log",
    )


def reference(
    bootstrap: str, prefix: str, partitions: int = PARTITIONS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pure core over the records as the broker stored them (one stream after another:
    the order of streams must not matter, only the order within each)."""
    settings = PerformanceSettings(kafka=KafkaSettings(topic_prefix=prefix), **SETTINGS)
    proc = PerformanceProcessor.from_settings(settings, clock=lambda: 0.0)
    state = State(proc.stores)
    for store in state.stores:
        for p in range(partitions):
            store.assign(p)
    proc.on_assigned([(prefix + "labels", p) for p in range(partitions)], state)
    records = []
    for topic, schema in proc.input_schemas().items():
        for m in consume_all(bootstrap, topic, idle_s=2.0, timeout_s=60):
            value = CODEC.decode(m.value(), schema, topic=topic)
            records.append(Record(topic, m.partition(), m.offset(), m.timestamp()[1], m.key(),
                                  value, (), schema))  # fmt: skip
    records.sort(key=lambda r: (r.topic, r.partition, r.offset))
    reports, alerts = [], []
    for i in range(0, len(records), 500):
        result = proc.process(records[i : i + 500], state)
        state.commit()
        for out in result.outputs:
            if out.schema == "PerformanceReport":
                reports.append(dict(out.value))
            elif out.schema == "SloAlert":
                alerts.append(dict(out.value))
    return reports, alerts


def by_key(values: list[dict[str, Any]], key: tuple[str, ...]) -> dict[tuple[Any, ...], list[Any]]:
    grouped: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for v in values:
        grouped[tuple(v[k] for k in key)].append(v)
    return dict(grouped)


def outputs(bootstrap: str, prefix: str, expect_reports: int, expect_alerts: int) -> dict[str, Any]:
    reports = consume_all(bootstrap, prefix + "performance", expect=expect_reports, timeout_s=400)
    alerts = consume_all(bootstrap, prefix + "performance.alerts", expect=expect_alerts,
                         timeout_s=60)  # fmt: skip
    dead = consume_all(bootstrap, prefix + "labels.dlq", idle_s=3.0, timeout_s=60)
    decoded_dead = Counter(
        (
            CODEC.decode(m.value(), "Label")["event_id"],
            dict(m.headers())["dlq.error.class"].decode(),
        )
        for m in dead
    )
    model = ("model_name", "model_version", "route")
    return {
        # One key per model route: per key, records keep their order in the partition.
        "reports": by_key([CODEC.decode(m.value(), "PerformanceReport") for m in reports], model),
        "alerts": by_key([CODEC.decode(m.value(), "SloAlert") for m in alerts], model),
        "dead": decoded_dead,
    }


def _boundary(proc: ServiceProcess) -> float:
    _, body = proc.http("/metrics")
    for line in body.get("text", "").splitlines():
        if line.startswith("streamml_performance_report_boundary_seconds "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.eos
def test_sigkill_three_times_reports_equal_the_uninterrupted_run(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    data = generate()
    event_times = {v["event_id"]: v["event_time"] for v in data[0]}
    quiet, killed = topic_prefix + "a.", topic_prefix + "b."
    provision(kafka_bootstrap, quiet, data)
    # The killed run's end markers come after its last kill: its reports cannot reach the
    # last boundary before, however fast a batch of partials moves the boundary (25 partials
    # span more than half the data), so every kill lands mid-stream. Per partition the
    # records are the same, in the same order, as the uninterrupted run's.
    provision(kafka_bootstrap, killed, data, end_markers=False)
    want_reports, want_alerts = reference(kafka_bootstrap, quiet)
    assert len(want_reports) > 1000 and want_alerts  # the run has substance
    final = max(r["window_end"] for r in want_reports)

    proc = service(kafka_bootstrap, quiet, logs_dir, "quiet").start()
    try:
        proc.wait_ready(90)
        uninterrupted = outputs(kafka_bootstrap, quiet, len(want_reports), len(want_alerts))
        assert proc.terminate() == 0
    finally:
        proc.stop()

    proc = service(kafka_bootstrap, killed, logs_dir, "killed").start()
    kills = 0
    try:
        proc.wait_ready(90)
        span = max(event_times.values()) - T0  # the data, not the tail the end markers add
        # The furthest boundary reported so far, by any instance: a restarted one shows the
        # last committed one (its killed predecessor may have shown a later, aborted one)
        # until it reports a boundary of its own, which it never does when the one before
        # it had already reported all the records before the end markers allow.
        reached = 0.0
        for fraction in (0.2, 0.45, 0.7):
            target, deadline = T0 + fraction * span, time.monotonic() + 240
            while reached < target and time.monotonic() < deadline:
                assert proc.alive
                time.sleep(0.05)
                reached = max(reached, _boundary(proc) * 1000)
            assert reached >= target, f"no report reached {fraction:.0%} of the data"
            assert reached < final  # mid-stream: the work is not done yet
            proc.kill()
            kills += 1
            proc = service(kafka_bootstrap, killed, logs_dir, f"killed-{kills}").start()
            proc.wait_ready(90)
            # Its /metrics shows the boundary restored with its state, not 0.
            wait_until(partial(_boundary, proc), 60, "the restored report boundary")
        produce_end_markers(kafka_bootstrap, killed, data[3])
        restarted = outputs(kafka_bootstrap, killed, len(want_reports), len(want_alerts))
        assert proc.terminate() == 0
    finally:
        proc.stop()
    assert kills == 3

    model = ("model_name", "model_version", "route")
    assert uninterrupted["reports"] == by_key(want_reports, model)
    assert uninterrupted["alerts"] == by_key(want_alerts, model)
    assert restarted["reports"] == uninterrupted["reports"]
    assert restarted["alerts"] == uninterrupted["alerts"]
    # Every late or orphan label record reached labels.dlq once, whichever path it took
    # (rejected on arrival, or dead-lettered later from state), in both runs alike.
    assert restarted["dead"] == uninterrupted["dead"]
    assert {reason for _, reason in uninterrupted["dead"]} == {"late", "orphan"}
    orphans = {v["event_id"] for v in data[2] if v["event_id"].endswith("-orphan")}
    assert {eid for eid, reason in uninterrupted["dead"] if reason == "orphan"} == orphans
    late = Counter(
        v["event_id"] for v in data[2]
        if (t := event_times.get(v["event_id"])) is not None and v["labeled_at"] - t > 2 * HOUR
    )  # fmt: skip
    assert {
        eid: n for (eid, reason), n in uninterrupted["dead"].items() if reason == "late"
    } == late


def test_recompute_command_prints_what_the_pure_core_reports(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    data = generate(events=300, seed=8)
    provision(kafka_bootstrap, topic_prefix, data)
    want_reports, want_alerts = reference(kafka_bootstrap, topic_prefix)
    out = tmp_path / "reports.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "streamml.cli", "performance", "recompute", "-o", str(out)],
        env={
            **os.environ,
            **ENV,
            "STREAMML_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STREAMML_KAFKA_TOPIC_PREFIX": topic_prefix,
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "type"} for r in lines if r["type"] ==
            "PerformanceReport"] == want_reports  # fmt: skip
    assert [{k: v for k, v in r.items() if k != "type"} for r in lines if r["type"] ==
            "SloAlert"] == want_alerts  # fmt: skip
    assert want_reports
