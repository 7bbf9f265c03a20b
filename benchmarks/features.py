"""Throughput of the features service and memory of its dedup store.

Measures, against the broker in KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092):

* events/s through ``python -m services.features`` (exactly-once transactions, dedup,
  validation, the demo feature set), with 1 and with 4 input partitions, one instance;
  the input holds 5% duplicates. Throughput = distinct vectors / (last - first output
  timestamp), so start-up and the broker round trip of the reader do not count;
* beside it, in the same run and on the same number of partitions, the runtime's no-op
  throughput (``benchmarks.runtime.measure_noop_runtime``: decode, forward the bytes,
  commit) - the baseline of the 50% target - and the no-op that re-encodes each Event
  (``reencode=True``), i.e. the runtime cost of a processor that emits a new record;
* Python heap bytes per retained key of the dedup store at 1,000,000 keys (tracemalloc).

Usage: ``python -m benchmarks.features [--events 40000] [--dedup-keys 1000000]``.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.runtime import measure_noop_runtime  # noqa: E402
from services.features.dedup import DedupStore  # noqa: E402
from streamml.codec import AvroCodec  # noqa: E402
from streamml.state import State  # noqa: E402
from streamml.synthetic import generate_events  # noqa: E402
from tests.kafkatest import (  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--dedup-keys", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.events < 1000 or args.dedup_keys < 1000:
        parser.error("--events and --dedup-keys must be >= 1000")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")

    results: dict[str, Any] = {"benchmark": "features", "bootstrap": bootstrap}
    results["dedup"] = measure_dedup_bytes_per_key(args.dedup_keys)
    print(f"dedup: {results['dedup']}", flush=True)
    results["noop_source"] = "benchmarks.runtime.measure_noop_runtime"
    results["events"] = args.events
    for partitions in (1, 4):
        figures = measure_features_service(bootstrap, args.events, partitions)
        print(f"features {partitions}p: {figures}", flush=True)
        # The same without feature names in each vector (FeatureVector.names may be empty;
        # consumers then take the order from feature_set_hash).
        no_names = measure_features_service(bootstrap, args.events, partitions, include_names=False)
        print(f"features {partitions}p without names: {no_names}", flush=True)
        noop = measure_noop_runtime(bootstrap, args.events, partitions)
        print(f"noop {partitions}p: {noop:.1f} events/s", flush=True)
        reencode = measure_noop_runtime(bootstrap, args.events, partitions, reencode=True)
        print(f"noop re-encoding {partitions}p: {reencode:.1f} events/s", flush=True)
        results[f"partitions_{partitions}"] = {
            "features": figures,
            "features_without_names": no_names,
            "noop_events_per_s": round(noop, 1),
            "noop_reencode_events_per_s": round(reencode, 1),
            "share_of_noop": _ratio(figures["events_per_s"], noop),
            "share_of_noop_without_names": _ratio(no_names["events_per_s"], noop),
            "share_of_noop_reencode": _ratio(figures["events_per_s"], reencode),
            "target_share_of_noop": 0.5,
        }
    results["dedup_target_bytes_per_key"] = 200
    print(json.dumps(results))


if __name__ == "__main__":
    main()
