"""Throughput and memory of the performance service (label join + live quality).

Measures, against the broker in KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092):

* joins/s and input records/s through one ``python -m services.performance`` instance
  (exactly-once transactions, join/metrics/meta state written per micro-batch) reading
  pre-produced predictions and their labels (delays 0-2 s of event time, default segments
  country and channel, a report every 10 s of event time), timed like the no-op: from the
  first input record consumed (creation time of the service's records-in series) to the
  transaction carrying the report that counts the last join (its broker timestamp);
* in the same run, the runtime's no-op throughput on the same number of input records
  (``benchmarks.runtime.measure_noop_runtime``). Service and no-op run interleaved for
  ``--rounds`` rounds (service, no-op, service, no-op, ...); each round gives a paired ratio
  (service input records/s / no-op records/s of that round). Target: the MEDIAN of the
  paired ratios (``share_of_noop``) >= 0.5; the best one is ``share_of_noop_best`` (a join
  needs two input records, so joins/s per no-op record/s is reported per round as well);
* heap bytes per pending prediction with 1,000,000 predictions waiting for their labels in
  the pure core (tracemalloc around the stores and the processor, after a commit; target
  <= 300 B), and the pure core's joins/s on one core.

Usage: ``python -m benchmarks.performance [--joins 20000] [--partitions 2] [--pending 1000000]
[--rounds 3]``. Every round is printed as it ends; the last line of output is one JSON
object with every figure (every round's, the median and best paired ratios).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from benchmarks.runtime import measure_noop_runtime  # noqa: E402
from services.performance.processor import JOIN_STORE, PerformanceProcessor  # noqa: E402
from services.performance.settings import PerformanceSettings  # noqa: E402
from streamml.codec import AvroCodec  # noqa: E402
from streamml.processor import Record  # noqa: E402
from streamml.state import State  # noqa: E402
from streamml.testkit import ServiceProcess, create_topics, free_port, produce  # noqa: E402

T0 = 1_790_000_000_000
STEP_MS = 10
REPORT_S = 10
COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "PL"]
CHANNELS = ["pos", "ecommerce", "atm", "moto"]


def _prediction(i: int, t: int, rng: random.Random) -> dict[str, Any]:
    score = rng.random()
    return {
        "event_id": f"evt-{i:010d}", "entity_id": f"c{i % 5000}", "event_time": t,
        "scored_at": t, "model_name": "fraud", "model_version": "7", "score": score,
        "threshold": 0.5, "decision": score >= 0.5, "route": "primary",
        "fallback_reason": None, "latency_ms": 0.4, "feature_set_hash": "h",
        "features_computed_at": t,
        "segments": {"country": rng.choice(COUNTRIES), "channel": rng.choice(CHANNELS)},
    }  # fmt: skip


def _streams(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(3)
    preds, labels = [], []
    for i in range(n):
        t = T0 + i * STEP_MS
        p = _prediction(i, t, rng)
        preds.append(p)
        a = t + rng.randint(0, 2000)
        y = int(rng.random() < p["score"])
        labels.append({"event_id": p["event_id"], "entity_id": p["entity_id"], "label": y,
                       "labeled_at": a, "source": "bench"})  # fmt: skip
    labels.sort(key=lambda v: v["labeled_at"])
    return preds, labels


def measure_service(bootstrap: str, n_joins: int, partitions: int) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, prefix, partitions=partitions)
    codec = AvroCodec()
    preds, labels = _streams(n_joins)
    end = T0 + n_joins * STEP_MS + 5 * 60_000  # past the default allowed_lateness (1 min)
    for topic, schema, values in (("predictions", "Prediction", preds),
                                  ("labels", "Label", labels)):  # fmt: skip
        rows: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = [
            (v["entity_id"].encode(), codec.encode(schema, v), []) for v in values
        ]
        produce(bootstrap, prefix + topic, rows)
    rng = random.Random(9)
    for p in range(partitions):  # end markers move every partition's watermark past the data
        mark = _prediction(10**9 + p, end, rng)
        produce(bootstrap, prefix + "predictions", [(b"end", codec.encode("Prediction", mark), [])],
                partition=p)  # fmt: skip
        label = {"event_id": mark["event_id"], "entity_id": "end", "label": 0, "labeled_at": end,
                 "source": "bench"}  # fmt: skip
        produce(bootstrap, prefix + "labels", [(b"end", codec.encode("Label", label), [])],
                partition=p)  # fmt: skip
    port = free_port()
    proc = ServiceProcess(
        ["-m", "services.performance"],
        {
            "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMML_PERFORMANCE_HTTP__PORT": str(port),
            "STREAMML_PERFORMANCE_REPORT_INTERVAL": f"{REPORT_S}s",
            "STREAMML_PERFORMANCE_SHADOW_TOPIC": "",
            "STREAMML_PERFORMANCE_LOG_LEVEL": "WARNING",
        },
        http_port=port,
    ).start()
    try:
        proc.wait_ready(120)
        last_report_ms = _last_report_ms(bootstrap, prefix + "performance", codec, n_joins)
        first_read_s = _first_read_s(proc)
    finally:
        proc.stop()
    seconds = max(last_report_ms / 1000 - first_read_s, 1e-9)
    records = 2 * n_joins + 2 * partitions  # predictions, labels and the end markers
    return {
        "joins": n_joins,
        "partitions": partitions,
        "seconds": round(seconds, 3),
        "joins_per_s": round(n_joins / seconds, 1),
        "input_records_per_s": round(records / seconds, 1),
    }


def _first_read_s(proc: ServiceProcess) -> float:
    """When the service consumed its first input records: the creation time prometheus_client
    records for the first ``streamml_records_in_total`` series (one per input topic). The
    runtime counts records per committed batch, so this is late by at most one batch (about
    1% of a 20,000-join run), in the service's favour."""
    _, body = proc.http("/metrics")
    created = [
        float(line.split()[-1])
        for line in body.get("text", "").splitlines()
        if line.startswith("streamml_records_in_created{")
    ]
    if not created:
        raise RuntimeError("the service exposes no streamml_records_in_created series")
    return min(created)


def _last_report_ms(bootstrap: str, topic: str, codec: AvroCodec, n_joins: int) -> int:
    """Broker timestamp of the first report that counts every join (its transaction is the
    one that committed the last input records)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
         "isolation.level": "read_committed", "enable.auto.commit": False}
    )  # fmt: skip
    consumer.assign([TopicPartition(topic, 0, 0)])
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                report = codec.decode(value, "PerformanceReport")
                done = report["labeled"] >= n_joins and report["window"] == "cumulative"
                if done and report["segment_field"] is None:
                    return int(msg.timestamp()[1])
    finally:
        consumer.close()
    raise RuntimeError(f"the service did not report {n_joins} joins in time")


def _settings() -> PerformanceSettings:
    return PerformanceSettings(report_interval=timedelta(seconds=REPORT_S), shadow_topic=None)


def _core(settings: PerformanceSettings | None = None) -> tuple[PerformanceProcessor, State]:
    settings = settings or _settings()
    processor = PerformanceProcessor.from_settings(settings, clock=lambda: 0.0)
    state = State(processor.stores)
    for store in state.stores:
        store.assign(0)
    return processor, state


def measure_pending_memory(n_pending: int, batch: int = 10_000) -> dict[str, Any]:
    """Heap bytes per pending prediction once ``n_pending`` wait for labels (committed).

    Production defaults (7-day horizon, a report every 5 minutes, segments country and
    channel): besides the join entries this counts the per-interval prediction counters,
    which grow with the event-time span (2 days: ~1,700 intervals), not with the count.
    """
    rng = random.Random(5)
    step = (6 * 86_400_000) // n_pending  # spread over 6 days: none reaches the 7-day horizon
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    processor, state = _core(PerformanceSettings(shadow_topic=None))
    started = time.perf_counter()
    for start in range(0, n_pending, batch):
        stop = min(start + batch, n_pending)
        values = [_prediction(i, T0 + i * step, rng) for i in range(start, stop)]
        records = [
            Record("predictions", 0, start + j, 0, None, v, (), "Prediction")
            for j, v in enumerate(values)
        ]
        processor.process(records, state)
        state.commit()
        del records, values
    elapsed = time.perf_counter() - started
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    pending = state.store(JOIN_STORE).size(0)
    assert pending == n_pending, pending
    return {
        "pending": pending,
        "bytes_total": after - before,
        "bytes_per_pending": round((after - before) / pending, 1),
        "predictions_per_s_in_core_with_tracemalloc": round(n_pending / elapsed, 1),
    }


def measure_core_joins(n_joins: int, batch: int = 500) -> dict[str, Any]:
    """Pure-core joins/s on one core (predictions and labels interleaved as produced)."""
    preds, labels = _streams(n_joins)
    records = []
    for i, (p, lab) in enumerate(zip(preds, labels, strict=True)):
        records.append(Record("predictions", 0, i, 0, None, p, (), "Prediction"))
        records.append(Record("labels", 0, i, 0, None, lab, (), "Label"))
    processor, state = _core()
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        processor.process(records[start : start + batch], state)
        state.commit()
    elapsed = time.perf_counter() - started
    return {
        "joins": n_joins,
        "joins_per_s": round(n_joins / elapsed, 1),
        "input_records_per_s": round(len(records) / elapsed, 1),
    }


def measure_rounds(bootstrap: str, joins: int, partitions: int, rounds: int) -> dict[str, Any]:
    """Service and no-op interleaved (service, no-op, service, no-op, ...): each round's
    service figure is paired with the no-op of the same round, so machine load that drifts
    between rounds (a shared 2-core box) shows up in both sides of a ratio."""
    n_records = 2 * joins  # the service read a prediction and a label per join
    per_round: list[dict[str, Any]] = []
    for number in range(1, rounds + 1):
        service = measure_service(bootstrap, joins, partitions)
        noop = float(measure_noop_runtime(bootstrap, n_records, partitions))
        share = service["input_records_per_s"] / noop if noop else 0.0
        row = {
            "round": number,
            "service": service,
            "noop_records_per_s": round(noop, 1),
            "share_of_noop": round(share, 3),
            "joins_per_noop_record": round(service["joins_per_s"] / noop, 3) if noop else None,
        }
        print(f"round {number}: {json.dumps(row)}", flush=True)
        per_round.append(row)
    shares = [row["share_of_noop"] for row in per_round]
    return {
        "rounds": per_round,
        "share_of_noop": round(statistics.median(shares), 3),
        "share_of_noop_best": max(shares),
        "service_input_records_per_s_median": round(
            statistics.median(row["service"]["input_records_per_s"] for row in per_round), 1
        ),
        "noop_records_per_s_median": round(
            statistics.median(row["noop_records_per_s"] for row in per_round), 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved service/no-op rounds (median ratio)"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.joins < 1 or args.partitions < 1 or args.pending < 1:
        parser.error("--rounds, --joins, --partitions and --pending must be at least 1")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    results: dict[str, Any] = {"bootstrap": bootstrap}

    core = measure_core_joins(args.joins)
    print(f"core: {core}", flush=True)
    results["core"] = core

    memory = measure_pending_memory(args.pending)
    print(f"memory: {memory}", flush=True)
    results["memory"] = memory

    results["noop_source"] = "benchmarks.runtime.measure_noop_runtime"
    results.update(measure_rounds(bootstrap, args.joins, args.partitions, args.rounds))
    share = results["share_of_noop"]
    results["target_share_of_noop"] = 0.5
    results["meets_throughput_target"] = share >= 0.5
    results["target_bytes_per_pending"] = 300
    results["meets_memory_target"] = memory["bytes_per_pending"] <= 300
    print(json.dumps(results))


if __name__ == "__main__":
    main()
