"""Throughput of the features service and memory of its dedup store.

Measures, against the broker in KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092), with 1
and with 4 input partitions, on one input topic per partition count (``--events`` events
plus 5% duplicates, pre-produced):

* ``features``: events/s through :class:`StreamRuntime` running the features processor
  as the service builds it (exactly-once transactions, dedup, validation, fail-stop
  circuit, the demo feature set, feature names in each vector), timed exactly like the
  no-op: from the first ``process`` call to the last input offset committed;
* ``features_without_names``: the same with ``include_names=false``;
* ``noop``: the runtime's no-op on the same input topic
  (``benchmarks.runtime.measure_noop_runtime``: decode, forward the bytes, commit) - the
  baseline of the 50% target - and ``noop_reencode``, the no-op that re-encodes each
  Event (the runtime cost of a processor that emits a new record);
* ``service``: events/s of ``python -m services.features`` as a process (its own input
  topic), from the first to the last output timestamp (start-up left out);
* Python heap bytes per retained key of the dedup store at 1,000,000 keys (tracemalloc);
* without a broker, CPU microseconds per event of the processor and of the encode.

Usage: ``python -m benchmarks.features [--events 40000] [--dedup-keys 1000000] [--rounds 3]``.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from benchmarks.runtime import BATCH, measure_noop_runtime  # noqa: E402
from services.features.dedup import DedupStore  # noqa: E402
from services.features.processor import FeaturesProcessor  # noqa: E402
from services.features.settings import FeaturesSettings  # noqa: E402
from streamml.codec import AvroCodec  # noqa: E402
from streamml.processor import Record, Result  # noqa: E402
from streamml.runtime import StreamRuntime  # noqa: E402
from streamml.service import tune_gc  # noqa: E402
from streamml.settings import HttpSettings, KafkaSettings, RuntimeSettings  # noqa: E402
from streamml.state import State  # noqa: E402
from streamml.synthetic import generate_events  # noqa: E402
from streamml.testkit import (  # noqa: E402
    ServiceProcess,
    consume_all,
    create_topics,
    free_port,
    produce,
)


def _stream(n_events: int, duplicates: float) -> tuple[list[tuple[bytes, bytes, list]], int]:
    codec = AvroCodec()
    rng = random.Random(1)
    stream = []
    for event, _ in generate_events(n_events, seed=3, n_entities=5000):
        record = (event["entity_id"].encode(), codec.encode("Event", event), [])
        stream.append(record)
        if rng.random() < duplicates:
            stream.append(record)
    return stream, n_events


def _run_service(
    bootstrap: str,
    *,
    args: list[str],
    env_prefix: str,
    output: str,
    n_events: int,
    partitions: int,
    duplicates: float,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Pre-produce the input, start one instance, time its committed output."""
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, prefix, partitions=partitions, names=[f"{prefix}{output}"])
    stream, expect = _stream(n_events, duplicates)
    produce(bootstrap, f"{prefix}events", stream)
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"{prefix}service.log"
    proc = ServiceProcess(
        args,
        {
            "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
            f"{env_prefix}HTTP__PORT": str(port),
            f"{env_prefix}RUNTIME__INSTANCE_ID": "bench",
            f"{env_prefix}RUNTIME__BATCH_MAX_RECORDS": "1000",
            f"{env_prefix}LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        },
        http_port=port,
        log_path=log_path,
    ).start()
    try:
        out = consume_all(bootstrap, f"{prefix}{output}", expect=expect, timeout_s=300)
    finally:
        proc.stop()
    if len(out) < expect:
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"{len(out)} of {expect} outputs; service log ends:\n{tail}")
    # Output timestamps are set when each transaction's records are produced: the span
    # from the first to the last leaves out start-up, restore and the reader's latency.
    stamps = sorted(m.timestamp()[1] for m in out)
    span_s = max((stamps[-1] - stamps[0]) / 1000.0, 1e-3)
    return {
        "partitions": partitions,
        "input_records": len(stream),
        "outputs": len(out),
        "seconds": round(span_s, 3),
        "events_per_s": round(len(stream) / span_s, 1),
    }


def measure_features_service(
    bootstrap: str, n_events: int, partitions: int, *, include_names: bool = True
) -> dict[str, Any]:
    """Events/s of one features instance (5% duplicates in the input)."""
    return _run_service(
        bootstrap,
        args=["-m", "services.features"],
        env_prefix="STREAMML_FEATURES_",
        extra_env={"STREAMML_FEATURES_INCLUDE_NAMES": str(include_names).lower()},
        output="features",
        n_events=n_events,
        partitions=partitions,
        duplicates=0.05,
    )


class _TimedFeatures(FeaturesProcessor):
    """The features processor, noting when its first batch arrives (as the no-op does)."""

    first_call: float | None = None

    def process(self, records: Sequence[Record], state: State) -> Result:
        if self.first_call is None:
            self.first_call = time.perf_counter()
        return super().process(records, state)


def prepare_features_input(bootstrap: str, n_events: int, partitions: int) -> tuple[str, int]:
    """Fresh topics (topics.yaml) under a new prefix, ``<prefix>events`` filled; -> (topic, n)."""
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, prefix, partitions=partitions)
    stream, _ = _stream(n_events, 0.05)
    produce(bootstrap, f"{prefix}events", stream)
    return f"{prefix}events", len(stream)


def _wait_committed(
    bootstrap: str, group: str, topic: str, total: int, runtime: threading.Thread
) -> float:
    """Block until ``group`` committed offsets summing to ``total``; return that time."""
    # Not subscribed: this consumer only reads the group's committed offsets.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        while True:
            committed = consumer.committed(tps, timeout=10)
            if sum(max(tp.offset, 0) for tp in committed) >= total:
                return time.perf_counter()
            if not runtime.is_alive():
                raise RuntimeError("the runtime exited before committing every input record")
            time.sleep(0.02)
    finally:
        consumer.close()


def measure_features_runtime(
    bootstrap: str, topic: str, n_records: int, *, include_names: bool = True
) -> float:
    """Records/s of the features processor on the runtime, timed like the no-op."""
    prefix = topic[: -len("events")]
    group = f"{prefix}features-{uuid.uuid4().hex[:4]}"
    settings = FeaturesSettings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix),
        runtime=RuntimeSettings(group_id=group, instance_id="bench", batch_max_records=BATCH),
        http=HttpSettings(port=0),
        include_names=include_names,
    )
    processor = _TimedFeatures.from_settings(settings)
    thresholds = gc.get_threshold()
    tune_gc(settings.gc_young_threshold)  # as python -m services.features does
    runtime = StreamRuntime(
        service="bench-features",
        processor=processor,
        inputs={topic: "Event"},
        kafka=settings.kafka,
        settings=settings.runtime,
        http=settings.http,
    )
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    try:
        done = _wait_committed(bootstrap, group, topic, n_records, thread)
    finally:
        runtime.stop()
        thread.join(30)
        gc.set_threshold(*thresholds)
    assert processor.first_call is not None
    return n_records / (done - processor.first_call)


def measure_noop_gc_tuned(bootstrap: str, topic: str, n_records: int, partitions: int) -> float:
    """The no-op with the features service's GC threshold (what the runtime would gain)."""
    thresholds = gc.get_threshold()
    tune_gc(FeaturesSettings().gc_young_threshold)
    try:
        return measure_noop_runtime(bootstrap, n_records, partitions, topic)
    finally:
        gc.set_threshold(*thresholds)


def measure_core(n_events: int = 20_000, repeats: int = 4) -> dict[str, float]:
    """CPU microseconds per event of the pure processor and of the FeatureVector encode.

    The processor is bound to the codec as the runtime binds it, so with the C kernel it
    writes its records itself (inside ``process_us``) and ``encode_us`` is what is left
    for the codec (none, normally).

    No broker: the events are decoded once, then fed in batches of 1,000 to a fresh
    processor ``repeats`` times; the least CPU time (``time.process_time``) counts.
    """
    codec = AvroCodec()
    raw = [codec.encode("Event", e) for e, _ in generate_events(n_events, seed=3)]
    records = [
        Record("b.events", 0, i, 0, None, codec.decode(b, "Event"), (), "Event", b)
        for i, b in enumerate(raw)
    ]
    figures: dict[str, float] = {}
    for names in (True, False):
        best_process = best_encode = float("inf")
        for _ in range(repeats):
            settings = FeaturesSettings(include_names=names)
            processor = FeaturesProcessor.from_settings(settings)
            processor.on_codec(codec)  # as the runtime does: the batch writes its records
            state = State(processor.stores)
            for store in state.stores:
                store.assign(0)
            process_s = encode_s = 0.0
            for i in range(0, n_events, 1000):
                started = time.process_time()
                result = processor.process(records[i : i + 1000], state)
                processed = time.process_time()
                for out in result.outputs:
                    if out.raw_value is None:  # what the runtime would encode
                        codec.encode(out.schema, out.value, topic=out.topic)
                encode_s += time.process_time() - processed
                process_s += processed - started
                state.commit()
            best_process = min(best_process, process_s)
            best_encode = min(best_encode, encode_s)
        suffix = "" if names else "_without_names"
        figures[f"process_us{suffix}"] = round(best_process / n_events * 1e6, 1)
        figures[f"encode_us{suffix}"] = round(best_encode / n_events * 1e6, 1)
    return figures


def measure_dedup_bytes_per_key(n_keys: int) -> dict[str, Any]:
    """Heap bytes per retained key once ``n_keys`` are committed to the dedup store."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    state = State(["dedup"])
    backing = state.store("dedup")
    backing.assign(0)
    dedup = DedupStore(backing, retention_ms=7 * 86_400_000)
    start_ms = 1_793_491_200_000
    step_ms = (6 * 86_400_000) // n_keys  # spread over 6 days: nothing expires
    started = time.perf_counter()
    for i in range(n_keys):
        event_time = start_ms + i * step_ms
        dedup.remember(0, dedup.digest(f"evt-{i:012d}-{i * 7919 % 100_003}"), event_time)
        if i % 10_000 == 9_999:
            dedup.advance(0, event_time)
            state.commit()
    state.commit()
    elapsed = time.perf_counter() - started
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert backing.size(0) == n_keys + 1  # + the partition's max event time
    return {
        "keys": n_keys,
        "bytes_total": after - before,
        "bytes_per_key": round((after - before) / n_keys, 1),
        "inserts_per_s": round(n_keys / elapsed, 1),
    }


def _ratio(value: float, baseline: float) -> float | None:
    return round(value / baseline, 3) if baseline else None


def _measure_partitions(
    bootstrap: str, n_events: int, partitions: int, rounds: int, failures: list[str]
) -> dict[str, Any]:
    topic, n_records = prepare_features_input(bootstrap, n_events, partitions)
    measures: dict[str, Callable[[], float]] = {
        "features": lambda: measure_features_runtime(bootstrap, topic, n_records),
        "features_without_names": lambda: measure_features_runtime(
            bootstrap, topic, n_records, include_names=False
        ),
        "noop": lambda: measure_noop_runtime(bootstrap, n_records, partitions, topic),
        "noop_reencode": lambda: measure_noop_runtime(
            bootstrap, n_records, partitions, topic, reencode=True
        ),
        "noop_gc_tuned": lambda: measure_noop_gc_tuned(bootstrap, topic, n_records, partitions),
    }
    runs: dict[str, list[float]] = {name: [] for name in measures}
    paired: list[float] = []  # features / no-op of the same round
    for _ in range(rounds):
        # Interleaved rounds: noise from the shared machine hits all alike.
        this_round: dict[str, float] = {}
        for name, measure in measures.items():
            try:
                this_round[name] = measure()
                runs[name].append(this_round[name])
            except RuntimeError as exc:  # e.g. a transient broker error at start-up
                failures.append(f"{partitions}p {name}: {exc}")
                print(f"{name}: failed ({exc}); this round is left out", flush=True)
        if "features" in this_round and "noop" in this_round:
            paired.append(this_round["features"] / this_round["noop"])
        print({k: [round(x) for x in v] for k, v in runs.items()}, flush=True)
    service = measure_features_service(bootstrap, n_events, partitions)
    figures: dict[str, Any] = {k: round(max(v, default=0.0), 1) for k, v in runs.items()}
    figures["input_records"] = n_records
    figures["rounds"] = {k: [round(x) for x in v] for k, v in runs.items()}
    noop = figures["noop"]
    return {
        "events_per_s": figures,
        "service": service,
        "share_of_noop": round(statistics.median(paired), 3) if paired else None,
        "share_of_noop_rounds": [round(r, 3) for r in paired],
        "share_of_noop_best": _ratio(figures["features"], noop),
        "share_of_noop_without_names": _ratio(figures["features_without_names"], noop),
        "share_of_noop_reencode": _ratio(figures["features"], figures["noop_reencode"]),
        "service_share_of_noop": _ratio(service["events_per_s"], noop),
        "share_of_noop_gc_tuned": _ratio(figures["features"], figures["noop_gc_tuned"]),
        "target_share_of_noop": 0.5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--dedup-keys", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    if args.events < 1000 or args.dedup_keys < 100_000 or args.rounds < 1:
        parser.error("need --events >= 1000, --dedup-keys >= 100000, --rounds >= 1")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")

    results: dict[str, Any] = {"benchmark": "features", "bootstrap": bootstrap}
    results["dedup"] = measure_dedup_bytes_per_key(args.dedup_keys)
    print(f"dedup: {results['dedup']}", flush=True)
    thresholds = gc.get_threshold()
    tune_gc(FeaturesSettings().gc_young_threshold)  # as the service does
    results["core_cpu_per_event"] = measure_core()
    gc.set_threshold(*thresholds)
    print(f"core: {results['core_cpu_per_event']}", flush=True)
    results["events"] = args.events
    results["method"] = (
        f"{args.rounds} interleaved rounds of features, features_without_names, "
        "noop, noop_reencode, noop_gc_tuned: same input topic, in-process StreamRuntime; "
        "share_of_noop = median over rounds of the round's features/noop ratio (the "
        "target's figure), share_of_noop_best = best features / best noop, the other "
        "shares best / best; "
        f"batch_max_records={BATCH}, input records/s from the first process() call to the "
        "last offset committed; features* with the service's GC threshold "
        "(gc_young_threshold), noop_gc_tuned: the no-op with it too; service (one run): "
        "python -m services.features, input records/s between the first and last output "
        "timestamp"
    )
    failures: list[str] = []
    for partitions in (1, 4):
        results[f"partitions_{partitions}"] = _measure_partitions(
            bootstrap, args.events, partitions, args.rounds, failures
        )
        print(f"{partitions}p: {results[f'partitions_{partitions}']}", flush=True)
    results["dedup_target_bytes_per_key"] = 200
    results["failed_measurements"] = failures
    print(json.dumps(results))


if __name__ == "__main__":
    main()
