"""Throughput of the scorer (exactly-once + batched ONNX) beside the no-op runtime.

Measures, against the broker in KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092):

* predictions/s of one ``python -m services.scorer`` instance scoring pre-produced
  FeatureVectors (demo feature set, 88 features) with the boosted-trees primary
  (fraud-gbt, 150 trees of depth 3, trained and signed for the run) and a fallback
  loaded; throughput = predictions / (last - first output timestamp), so start-up and
  the reader's round trip do not count;
* model time per micro-batch, p50 and p99 (each Prediction carries its batch's
  onnxruntime time in ``latency_ms``), and the batch sizes;
* in the same run, the runtime's no-op throughput on the same number of records
  (``benchmarks.runtime.measure_noop_runtime``; if that module is missing, the runtime's
  passthrough example timed the same way).

Usage: ``python -m benchmarks.scorer [--records 20000] [--partitions 4] [--batch 1000]``.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.features.offline import build_matrix  # noqa: E402
from services.scorer.artifact import generate_keypair, load_private_key  # noqa: E402
from services.scorer.training import train_and_sign  # noqa: E402
from streamml.codec import AvroCodec  # noqa: E402
from streamml.synthetic import generate_events  # noqa: E402
from tests.kafkatest import (  # noqa: E402
    ServiceProcess,
    consume_all,
    create_topics,
    free_port,
    produce,
)


def _vectors(n: int, codec: AvroCodec) -> list[tuple[bytes, bytes, list[Any]]]:
    matrix = build_matrix(e for e, _ in generate_events(n, seed=17, n_entities=5000))
    out = []
    for i in range(len(matrix)):
        value = {
            "event_id": matrix.event_ids[i],
            "entity_id": matrix.entity_ids[i],
            "event_time": int(matrix.event_times[i]),
            "computed_at": int(matrix.event_times[i]),
            "feature_set": matrix.feature_set,
            "feature_set_version": matrix.feature_set_version,
            "feature_set_hash": matrix.feature_set_hash,
            "names": list(matrix.names),
            "values": matrix.values[i].tolist(),
            "categories": {k: v[i] for k, v in matrix.categories.items()},
        }
        out.append((value["entity_id"].encode(), codec.encode("FeatureVector", value), []))
    return out


def measure_scorer(
    bootstrap: str, models: Path, public_key: Path, n: int, partitions: int, batch: int
) -> dict[str, Any]:
    codec = AvroCodec()
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, prefix, partitions=partitions)
    records = _vectors(n, codec)
    produce(bootstrap, f"{prefix}features", records)
    port = free_port()
    proc = ServiceProcess(
        ["-m", "services.scorer"],
        {
            "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMML_SCORER_HTTP__PORT": str(port),
            "STREAMML_SCORER_RUNTIME__INSTANCE_ID": "bench",
            "STREAMML_SCORER_RUNTIME__BATCH_MAX_RECORDS": str(batch),
            "STREAMML_SCORER_LOG_LEVEL": "WARNING",
            "STREAMML_SCORER_MODEL_DIR": str(models),
            "STREAMML_SCORER_PUBLIC_KEY_PATH": str(public_key),
            "STREAMML_SCORER_LATENCY_BUDGET_MS": "1000",
        },
        http_port=port,
    ).start()
    try:
        out = consume_all(bootstrap, f"{prefix}predictions", expect=len(records), timeout_s=600)
    finally:
        proc.stop()
    stamps = sorted(m.timestamp()[1] for m in out)
    span_s = max((stamps[-1] - stamps[0]) / 1000.0, 1e-3)
    predictions = [codec.decode(m.value(), "Prediction") for m in out]
    # One micro-batch per (scored_at, latency_ms) pair: every record of a batch shares both.
    batches = Counter((p["scored_at"], p["latency_ms"]) for p in predictions)
    model_ms = np.array([latency for _, latency in batches])
    routes = Counter(p["route"] for p in predictions)
    return {
        "partitions": partitions,
        "records": len(records),
        "predictions": len(out),
        "distinct_event_ids": len({p["event_id"] for p in predictions}),
        "routes": dict(routes),
        "seconds": round(span_s, 3),
        "predictions_per_s": round(len(out) / span_s, 1),
        "batches": len(batches),
        "batch_size_mean": round(float(np.mean(list(batches.values()))), 1),
        "model_ms_per_batch_p50": round(float(np.percentile(model_ms, 50)), 3),
        "model_ms_per_batch_p99": round(float(np.percentile(model_ms, 99)), 3),
        "model_us_per_record": round(1000 * float(model_ms.sum()) / len(out), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--train-events", type=int, default=8000)
    args = parser.parse_args()
    if args.records < 1000 or args.partitions < 1 or args.batch < 1:
        parser.error("--records >= 1000, --partitions >= 1, --batch >= 1")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    results: dict[str, Any] = {"benchmark": "scorer", "bootstrap": bootstrap}

    with tempfile.TemporaryDirectory(prefix="scorer-bench-") as tmp:
        root = Path(tmp)
        private_path, public_path = generate_keypair(root / "keys")
        train_and_sign(
            events=args.train_events, seed=7, out=root / "models",
            key=load_private_key(private_path),
        )  # fmt: skip
        scorer = measure_scorer(
            bootstrap, root / "models", public_path, args.records, args.partitions, args.batch
        )
    print(f"scorer: {scorer}", flush=True)
    try:
        from benchmarks.runtime import measure_noop_runtime  # noqa: PLC0415

        results["noop_source"] = "benchmarks.runtime.measure_noop_runtime"
        noop = float(measure_noop_runtime(bootstrap, args.records, args.partitions))
    except ImportError:
        from benchmarks.features import measure_passthrough  # noqa: PLC0415

        results["noop_source"] = (
            "benchmarks.runtime is missing: fallback = streamml.examples passthrough "
            "(benchmarks.features.measure_passthrough), timed like the scorer"
        )
        noop = measure_passthrough(bootstrap, args.records, args.partitions)
    print(f"noop: {noop:.1f} records/s", flush=True)
    results["scorer"] = scorer
    results["noop_records_per_s"] = round(noop, 1)
    results["share_of_noop"] = round(scorer["predictions_per_s"] / noop, 3) if noop else None
    print(json.dumps(results))


if __name__ == "__main__":
    main()
