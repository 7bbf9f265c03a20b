"""End-to-end latency: an event produced -> its prediction visible to a read_committed reader.

For each rate, on fresh topics (topics.yaml, ``--partitions`` partitions, 4 by default):

* ``python -m services.features`` and ``python -m services.scorer`` start as the docs run
  them (default settings; only the broker, topic prefix, HTTP port, instance id, log level
  and the model directory/public key are set), one instance each, and are waited on
  until ready and warmed up (``--warmup-s`` of traffic whose predictions are not counted);
* a producer process sends Events at the rate for ``--seconds``, each event's
  ``event_time`` set to the wall clock (ms) just before ``produce``, keyed by entity as the
  demo producer keys them (``linger.ms`` 5);
* a ``read_committed`` consumer of ``predictions`` in this process notes, per prediction,
  the wall clock on receipt minus its ``event_time``: p50/p90/p99/max over the run.

Rates: ``--rates`` (default 500, 2,000, 5,000 events/s), then ``--max-rates`` in
ascending order until one is not sustained (the producer fell short of 95% of the rate,
a prediction did not arrive within ``--drain-s`` after the last event, or p99 passed
1 s); the highest sustained one is reported as ``max_sustained_rate``.

Same-run baseline: ``--baseline-ref REF`` (default ``HEAD``; ``none`` to skip) runs the
same measurements, interleaved round by round, with the services of another commit
(``git archive`` of REF in a temporary directory; the features service's compiled kernel
is copied over when its C source is the same). Figures are medians over ``--rounds``
interleaved rounds, with the machine's 1-minute load average at the start of every
measurement (the dev machine is shared: read the load beside the figures).

Usage: ``KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m benchmarks.latency
[--rates 500,2000,5000] [--max-rates 8000,12000] [--seconds 20] [--rounds 3]
[--baseline-ref HEAD~1]``. The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.scorer.artifact import generate_keypair, load_private_key  # noqa: E402
from services.scorer.training import train_and_sign  # noqa: E402
from streamml.codec import AvroCodec  # noqa: E402
from streamml.synthetic import generate_events  # noqa: E402
from streamml.testkit import ServiceProcess, create_topics, free_port  # noqa: E402

WARMUP_PREFIX = "w-"
SUSTAINED_P99_MS = 1000.0
NATIVE = "services/features/_native.c"


class _TreeService(ServiceProcess):
    """A service process run from a given source tree (the worktree or a baseline export)."""

    def __init__(self, tree: Path, args: list[str], env: dict[str, str], port: int, log: Path):
        if tree != ROOT:
            env = {**env, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'libs'}"}
        super().__init__(args, env, http_port=port, log_path=log)
        self.tree = tree

    def start(self) -> _TreeService:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [sys.executable, *self.args],
            env=self.env,
            cwd=self.tree,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self


def _export_tree(ref: str, into: Path) -> Path:
    """``git archive`` of ``ref`` in ``into``, with the compiled kernel if its source is equal."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    same_kernel = (into / NATIVE).exists() and (into / NATIVE).read_bytes() == (
        ROOT / NATIVE
    ).read_bytes()
    if same_kernel:
        for built in (ROOT / "services" / "features").glob("_native*.so"):
            shutil.copy2(built, into / "services" / "features" / built.name)
    return into


def _serve_producer() -> int:
    """Child process: send Events at BENCH_RATE for BENCH_SECONDS after a warm-up."""
    bootstrap, topic = os.environ["BENCH_BOOTSTRAP"], os.environ["BENCH_TOPIC"]
    rate, seconds = float(os.environ["BENCH_RATE"]), float(os.environ["BENCH_SECONDS"])
    warmup = float(os.environ["BENCH_WARMUP"])
    run = os.environ["BENCH_RUN"]
    codec = AvroCodec()
    total = int(rate * (seconds + warmup))
    warm = int(rate * warmup)
    events = [e for e, _ in generate_events(total, seed=5, n_entities=5000)]
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 5})  # fmt: skip
    started = time.monotonic()
    measured_started = measured_ended = 0.0
    for index, event in enumerate(events):
        if index == warm:
            measured_started = time.monotonic()
        due = started + index / rate
        delay = due - time.monotonic()
        if delay > 0.0005:
            time.sleep(delay)
        prefix = WARMUP_PREFIX if index < warm else "m-"
        event["event_id"] = f"{prefix}{run}-{index}"
        event["event_time"] = int(time.time() * 1000)
        value = codec.encode("Event", event, topic=topic)
        while True:
            try:
                producer.produce(topic, value, event["entity_id"].encode())
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    measured_ended = time.monotonic()
    producer.flush(60)
    achieved = (total - warm) / max(measured_ended - measured_started, 1e-6)
    print(json.dumps({"measured": total - warm, "achieved_rate": round(achieved, 1)}))
    return 0


class _PredictionReader(threading.Thread):
    """read_committed reader of a new predictions topic, from its beginning.

    It reads as a downstream consumer does (docs/consumers.md): librdkafka's default fetch
    settings and one ``poll`` per record, which returns as soon as a record is there. (It
    used ``consume(1000, timeout=0.05)`` before, which waits for 1,000 records or the
    50 ms timeout: up to 50 ms of the measured latency was the reader's own wait.)
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="prediction-reader", daemon=True)
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"latency-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        # The topic is created for this run: its beginning is where the run starts.
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.codec = AvroCodec()
        self.latency_ms: dict[str, float] = {}
        # Per prediction, by the wall-clock stamps the services write: event -> features
        # computed, -> scored, -> read here (each hop's transaction is in the next stage).
        self.stages: list[tuple[float, float, float]] = []
        self.warm = 0
        self.duplicates = 0
        self.halt = threading.Event()

    def run(self) -> None:
        decode = self.codec.decode
        try:
            while not self.halt.is_set():
                msg = self.consumer.poll(0.05)
                now_ms = time.time() * 1000
                if msg is not None and msg.error() is None:
                    prediction = decode(msg.value() or b"", "Prediction")
                    event_id = prediction["event_id"]
                    if event_id.startswith(WARMUP_PREFIX):
                        self.warm += 1
                    elif event_id in self.latency_ms:
                        self.duplicates += 1
                    else:
                        self.latency_ms[event_id] = now_ms - prediction["event_time"]
                        self.stages.append(
                            (
                                prediction["features_computed_at"] - prediction["event_time"],
                                prediction["scored_at"] - prediction["features_computed_at"],
                                now_ms - prediction["scored_at"],
                            )
                        )
        finally:
            self.consumer.close()


def _loop_figures(service: ServiceProcess) -> dict[str, float]:
    """Transactions, mean batch size and mean commit time of a service, from /metrics."""
    _, body = service.http("/metrics")
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(body.get("text", "")):
        for sample in family.samples:
            if sample.name == "streamml_transactions_total" and sample.labels.get(
                "outcome", "committed"
            ) not in ("committed",):
                continue
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    batches = sums.get("streamml_batch_records_count", 0.0)
    commits = sums.get("streamml_transaction_commit_seconds_count", 0.0)
    return {
        "transactions": sums.get("streamml_transactions_total", 0.0),
        "mean_batch": round(sums.get("streamml_batch_records_sum", 0.0) / batches, 1)
        if batches
        else 0.0,
        "mean_commit_ms": round(
            1000 * sums.get("streamml_transaction_commit_seconds_sum", 0.0) / commits, 1
        )
        if commits
        else 0.0,
    }


def measure(
    bootstrap: str,
    tree: Path,
    models: Path,
    public_key: Path,
    *,
    rate: int,
    seconds: float,
    warmup_s: float,
    drain_s: float,
    partitions: int,
    logs: Path,
) -> dict[str, Any]:
    prefix = f"lat{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, prefix, partitions=partitions)
    load_at_start = os.getloadavg()[0]
    common = {"STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "STREAMML_KAFKA_TOPIC_PREFIX": prefix}
    services = []
    for name, extra in (
        ("features", {}),
        (
            "scorer",
            {
                "STREAMML_SCORER_MODEL_DIR": str(models),
                "STREAMML_SCORER_PUBLIC_KEY_PATH": str(public_key),
            },
        ),
    ):
        upper = name.upper()
        port = free_port()
        env = {
            **common,
            f"STREAMML_{upper}_HTTP__PORT": str(port),
            f"STREAMML_{upper}_RUNTIME__INSTANCE_ID": f"lat-{name}",
            f"STREAMML_{upper}_LOG_LEVEL": "WARNING",
            **extra,
        }
        services.append(
            _TreeService(tree, ["-m", f"services.{name}"], env, port, logs / f"{prefix}{name}.log")
        )
    reader = _PredictionReader(bootstrap, f"{prefix}predictions")
    producer: subprocess.Popen[bytes] | None = None
    try:
        for service in services:
            service.start()
        for service in services:
            service.wait_ready(120)
        reader.start()
        producer = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.latency", "--serve-producer"],
            cwd=ROOT,
            env={
                **os.environ,
                "BENCH_BOOTSTRAP": bootstrap,
                "BENCH_TOPIC": f"{prefix}events",
                "BENCH_RATE": str(rate),
                "BENCH_SECONDS": str(seconds),
                "BENCH_WARMUP": str(warmup_s),
                "BENCH_RUN": prefix,
            },
            stdout=subprocess.PIPE,
        )
        out, _ = producer.communicate(timeout=seconds + warmup_s + 300)
        sent = json.loads(out.decode().strip().splitlines()[-1])
        deadline = time.monotonic() + drain_s
        while len(reader.latency_ms) < sent["measured"] and time.monotonic() < deadline:
            time.sleep(0.1)
        loops = {s.args[-1].split(".")[-1]: _loop_figures(s) for s in services}
    finally:
        reader.halt.set()
        if producer is not None and producer.poll() is None:
            producer.kill()
        for service in services:
            service.stop()
    reader.join(10)
    values = np.array(list(reader.latency_ms.values()))
    received = len(values)
    row: dict[str, Any] = {
        "rate": rate,
        "achieved_rate": sent["achieved_rate"],
        "events": sent["measured"],
        "predictions": received,
        "duplicates": reader.duplicates,
        "load_1m_at_start": round(load_at_start, 2),
    }
    if received:
        for q in (50, 90, 99):
            row[f"p{q}_ms"] = round(float(np.percentile(values, q)), 1)
        row["max_ms"] = round(float(values.max()), 1)
        stages = np.array(reader.stages)
        for column, stage in enumerate(("to_features", "features_to_scored", "scored_to_read")):
            row[f"{stage}_p50_ms"] = round(float(np.percentile(stages[:, column], 50)), 1)
            row[f"{stage}_p99_ms"] = round(float(np.percentile(stages[:, column], 99)), 1)
    for name, figures in loops.items():
        for key, value in figures.items():
            row[f"{name}_{key}"] = value
    row["sustained"] = bool(
        received == sent["measured"]
        and sent["achieved_rate"] >= 0.95 * rate
        and row.get("p99_ms", float("inf")) <= SUSTAINED_P99_MS
    )
    return row


def _median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"rounds": len(rows)}
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "achieved_rate", "load_1m_at_start"):
        values = [r[key] for r in rows if key in r]
        if values:
            summary[key] = round(statistics.median(values), 1)
            summary[f"{key}_range"] = [min(values), max(values)]
    summary["all_sustained"] = all(r["sustained"] for r in rows)
    summary["duplicates"] = sum(r["duplicates"] for r in rows)
    summary["missing"] = sum(r["events"] - r["predictions"] for r in rows)
    return summary


def main() -> None:
    if sys.argv[1:] == ["--serve-producer"]:
        sys.exit(_serve_producer())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="500,2000,5000", help="events/s, comma-separated")
    parser.add_argument("--max-rates", default="8000,11000,14000",
                        help="higher rates tried in order until one is not sustained")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per rate")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--drain-s", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--baseline-ref", default="HEAD", help="git ref, or 'none'")
    parser.add_argument("--train-events", type=int, default=8000)
    args = parser.parse_args()
    try:
        rates = [int(r) for r in args.rates.split(",") if r]
        max_rates = sorted(int(r) for r in args.max_rates.split(",") if r)
    except ValueError:
        parser.error("--rates and --max-rates are comma-separated integers, e.g. 500,2000")
    if not rates or min(rates + max_rates) < 1 or args.seconds < 1 or args.rounds < 1:
        parser.error("need rates >= 1 event/s, --seconds >= 1, --rounds >= 1")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    options = {
        "seconds": args.seconds,
        "warmup_s": args.warmup_s,
        "drain_s": args.drain_s,
        "partitions": args.partitions,
    }
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
        root = Path(tmp)
        logs = root / "logs"
        logs.mkdir()
        private_path, public_path = generate_keypair(root / "keys")
        models = root / "models"
        train_and_sign(events=args.train_events, seed=7, out=models,
                       key=load_private_key(private_path))  # fmt: skip
        trees = {"current": ROOT}
        if args.baseline_ref != "none":
            trees["baseline"] = _export_tree(args.baseline_ref, root / "baseline")
        rows: dict[str, dict[int, list[dict[str, Any]]]] = {name: {} for name in trees}
        for n in range(args.rounds):
            for rate in rates:
                for name, tree in trees.items():
                    row = measure(bootstrap, tree, models, public_path, rate=rate, **options,
                                  logs=logs)  # fmt: skip
                    rows[name].setdefault(rate, []).append(row)
                    print(f"round {n + 1} {name} {rate}/s: {json.dumps(row)}", flush=True)
        highest: dict[str, Any] = {"rate": None}
        for rate in max_rates:
            row = measure(bootstrap, ROOT, models, public_path, rate=rate, **options, logs=logs)
            print(f"max probe current {rate}/s: {json.dumps(row)}", flush=True)
            if not row["sustained"]:
                highest["first_not_sustained"] = row
                break
            highest = {"rate": rate, **row}
    results: dict[str, Any] = {
        "benchmark": "latency",
        "bootstrap": bootstrap,
        "partitions": args.partitions,
        "seconds_per_rate": args.seconds,
        "baseline_ref": args.baseline_ref,
        "cpus": os.cpu_count(),
        "method": f"{args.rounds} interleaved rounds per rate (current, baseline); medians "
        "over rounds of each run's percentiles; latency = read_committed receipt - event_time",
        "target_p99_ms": 250,
    }
    for name, by_rate in rows.items():
        results[name] = {str(rate): _median_rows(r) for rate, r in by_rate.items()}
    results["max_sustained"] = highest
    results["max_sustained_rate"] = highest.get("rate")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
