"""Throughput of the drift service, and where its time goes.

Measures, against the broker in KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092):

* feature values/s through one ``python -m services.drift`` instance (exactly-once
  transactions, state written per micro-batch) reading pre-produced FeatureVectors of
  20 numeric features + 1 categorical attribute, ADWIN and Page-Hinkley on every value,
  window tests on every 5-second window. Progress is read from the committed window
  reports: values between the first and the last report / the time between them, so
  start-up and the reader's round trip do not count;
* in the same run, the runtime's no-op throughput on the same number of records
  (``benchmarks.runtime.measure_noop_runtime``);
* the pure core on one core (no Kafka): values/s with the detectors, without them, and
  the share of core time spent inside river (two ways: timing difference, and cProfile).

Usage: ``python -m benchmarks.drift [--records 100000] [--partitions 1]``.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.runtime import measure_noop_runtime  # noqa: E402
from services.drift.detectors import DetectorParams  # noqa: E402
from services.drift.processor import DriftProcessor  # noqa: E402
from services.drift.reference import reference_from_mapping, synthetic_reference  # noqa: E402
from streamml.codec import AvroCodec  # noqa: E402
from streamml.processor import Record  # noqa: E402
from streamml.state import State  # noqa: E402
from streamml.testkit import (  # noqa: E402
    ServiceProcess,
    consume_all,
    create_topics,
    free_port,
    produce,
    wait_until,
)

FEATURES = 20
NAMES = [f"x{i:02d}" for i in range(FEATURES)]
CHANNELS = {"pos": 0.5, "ecommerce": 0.35, "atm": 0.1, "moto": 0.05}
STEP_MS = 5  # 1,000 records per 5 s window
T0 = 1_790_000_000_000


def _reference_document() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    columns = {name: rng.normal(size=20_000) for name in NAMES}
    return synthetic_reference(
        columns, score=rng.beta(1, 12, size=20_000), categories={"channel": CHANNELS}
    )


def _vectors(n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(n, FEATURES)).tolist()
    keys = list(CHANNELS)
    channels = rng.choice(len(keys), size=n, p=list(CHANNELS.values()))
    return [
        {"event_id": f"e{i}", "entity_id": f"c{i % 1000}", "event_time": T0 + i * STEP_MS,
         "computed_at": T0 + i * STEP_MS, "feature_set": "bench", "feature_set_version": "1",
         "feature_set_hash": "h", "names": NAMES, "values": values[i],
         "categories": {"channel": keys[channels[i]]}}
        for i in range(n)
    ]  # fmt: skip


def measure_service(bootstrap: str, n_records: int, partitions: int) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, prefix, partitions=partitions)
    codec = AvroCodec()
    topic = f"{prefix}features"
    vectors = _vectors(n_records)
    for p in range(partitions):
        rows = [
            (v["entity_id"].encode(), codec.encode("FeatureVector", v, topic=topic), [])
            for i, v in enumerate(vectors) if i % partitions == p
        ]  # fmt: skip
        produce(bootstrap, topic, rows, partition=p)
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference.json"
        reference.write_text(json.dumps(_reference_document()))
        port = free_port()
        proc = ServiceProcess(
            ["-m", "services.drift"],
            {
                "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
                "STREAMML_DRIFT_REFERENCE_PATH": str(reference),
                "STREAMML_DRIFT_WINDOW_MS": "5000",
                "STREAMML_DRIFT_HTTP__PORT": str(port),
                "STREAMML_DRIFT_LOG_LEVEL": "WARNING",
            },
            http_port=port,
        ).start()
        try:
            proc.wait_ready(120)
            windows = n_records * STEP_MS // 5_000 - 1  # the last window stays open

            def closed() -> list[tuple[int, dict[str, Any]]]:
                """Window reports (not detection or progress reports), by time written."""
                topic = f"{prefix}drift.windows"
                found = [
                    (m.timestamp()[1], codec.decode(m.value(), "DriftWindowReport", topic=topic))
                    for m in consume_all(bootstrap, topic, idle_s=1, timeout_s=60)
                ]
                return [(at, r) for at, r in found if r["kind"] == "window"]  # fmt: skip

            wait_until(lambda: len(closed()) >= windows * partitions, 600,
                       "every window is reported", interval_s=1.0)  # fmt: skip
            decoded = sorted(closed(), key=lambda pair: pair[0])
        finally:
            proc.stop()
    first_ms, last_ms = decoded[0][0], decoded[-1][0]
    records = sum(r["records"] for _, r in decoded[1:])
    elapsed = max((last_ms - first_ms) / 1000, 1e-9)
    return {
        "records": n_records,
        "partitions": partitions,
        "window_reports": len(decoded),
        "records_timed": records,
        "seconds": round(elapsed, 3),
        "records_per_s": round(records / elapsed, 1),
        "feature_values_per_s": round(records * FEATURES / elapsed, 1),
    }


def _records(n: int) -> list[Record]:
    return [
        Record(topic="features", partition=0, offset=i, timestamp_ms=v["event_time"], key=b"k",
               value=v, headers=(), schema="FeatureVector")
        for i, v in enumerate(_vectors(n))
    ]  # fmt: skip


def _core(detectors: DetectorParams) -> tuple[DriftProcessor, State]:
    processor = DriftProcessor(
        reference=reference_from_mapping(_reference_document()),
        features_topic="features",
        predictions_topic=None,
        windows_topic="drift.windows",
        alerts_topic="drift.alerts",
        state_key=b"bench",
        window_ms=5_000,
        detectors=detectors,
    )
    state = State(processor.stores)
    for store in state.stores:
        store.assign(0)
    return processor, state


def _run_core(processor: DriftProcessor, state: State, records: list[Record], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        processor.process(records[start : start + batch], state)
        state.commit()
    return time.perf_counter() - started


def measure_core(n_records: int, batch: int = 500) -> dict[str, Any]:
    """The pure processor on one core: with and without river, and a cProfile split."""
    records = _records(n_records)
    values = n_records * FEATURES
    with_river = _run_core(*_core(DetectorParams()), records, batch)
    without = _run_core(
        *_core(DetectorParams(adwin=False, page_hinkley=False, spread=False)), records, batch
    )
    kswin = _run_core(*_core(DetectorParams(kswin_every=50)), records, batch)
    profiler = cProfile.Profile()
    processor, state = _core(DetectorParams())
    profiler.enable()
    _run_core(processor, state, records, batch)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = 0.0
    in_river = 0.0
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        if f"{os.sep}river{os.sep}" in filename or "AdaptiveWindowing" in name:
            in_river += tottime
    return {
        "records": n_records,
        "batch": batch,
        "values_per_s": round(values / with_river, 1),
        "values_per_s_without_detectors": round(values / without, 1),
        "values_per_s_with_kswin_every_50": round(values / kswin, 1),
        "river_share_by_timing": round(1 - without / with_river, 3),
        "river_share_by_cprofile": round(in_river / total, 3) if total else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--core-records", type=int, default=40_000)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    results: dict[str, Any] = {"bootstrap": bootstrap, "features": FEATURES}

    core = measure_core(args.core_records)
    print(f"core: {core}", flush=True)
    results["core"] = core

    service = measure_service(bootstrap, args.records, args.partitions)
    print(f"service: {service}", flush=True)
    results["service"] = service

    results["noop_source"] = "benchmarks.runtime.measure_noop_runtime"
    noop = float(measure_noop_runtime(bootstrap, args.records, args.partitions))
    print(f"noop: {noop:.1f} records/s", flush=True)
    results["noop_records_per_s"] = round(noop, 1)
    results["service_share_of_noop"] = round(service["records_per_s"] / noop, 3) if noop else None
    results["target_values_per_s"] = 100_000
    results["meets_target"] = service["feature_values_per_s"] >= 100_000
    print(json.dumps(results))


if __name__ == "__main__":
    main()
