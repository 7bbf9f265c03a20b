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
  (``benchmarks.runtime.measure_noop_runtime``). That baseline reads ~120-byte Events; a
  FeatureVector with 88 named features is ~2.5 KB, so the run also measures a no-op on
  the *same* FeatureVectors (decode, one constant Prediction per vector, encode, same
  transactions): the scorer's own cost (validation, ONNX, routing) is the gap to it.

The vectors carry their 88 names (as the features service writes them) unless
``--without-names``. The scorer reads them as the service does by default, with the codec
projection ``FeatureVector[-names]`` (docs/decisions/scorer-names-projection.md), and so
does the same-input no-op; ``--check-names`` runs both with the full ``FeatureVector``
decode instead (scorer setting ``check_names``), i.e. as before the projection.

Measured on the 2-core dev machine (shared, so +-30% run to run), 40,000 records, 4
partitions, 5 interleaved rounds: the scorer at 47,700-54,600 predictions/s, a median
0.79 (0.73-0.84) of the Event no-op (docs/decisions/runtime-fetch-queue-backoff.md).
Before the runtime's ``fetch_queue_backoff_ms`` setting (20 ms), librdkafka's default
1 s back-off after 64 MB prefetched (~28,000 vectors; the Event no-op's 4.8 MB never
reach it) held the scorer at ~30,000/s, a median 0.49 (docs/decisions/
scorer-throughput.md). Off-broker a vector costs ~7 us to decode with the projection (an
array of 88 doubles as one NumPy array), ~3.4 us in the scorer (~1.3 us of onnxruntime in
1,000-row batches) and ~3.5 us to encode its Prediction.

Usage: ``python -m benchmarks.scorer [--records 20000] [--partitions 4] [--batch 1000]
[--rounds 3] [--check-names] [--without-names]``. ``share_of_noop`` (the target's figure)
is the median over the interleaved rounds of each round's scorer/no-op ratio.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.runtime import measure_noop_runtime  # noqa: E402
from services.features.offline import build_matrix  # noqa: E402
from services.scorer.artifact import generate_keypair, load_private_key  # noqa: E402
from services.scorer.processor import NAMELESS_VECTOR, VECTOR_SCHEMA  # noqa: E402
from services.scorer.training import train_and_sign  # noqa: E402
from streamml.codec import AvroCodec  # noqa: E402
from streamml.processor import Output, Processor, Record, Result  # noqa: E402
from streamml.runtime import StreamRuntime  # noqa: E402
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

WITH_NAMES = True
CHECK_NAMES = False  # --check-names: full FeatureVector decode, as before the projection


@functools.lru_cache(maxsize=2)
def _vectors(n: int) -> list[tuple[bytes, bytes, list[Any]]]:
    codec = AvroCodec()
    matrix = build_matrix(e for e, _ in generate_events(n, seed=17, n_entities=5000))
    out: list[tuple[bytes, bytes, list[Any]]] = []
    for i in range(len(matrix)):
        value = {
            "event_id": matrix.event_ids[i],
            "entity_id": matrix.entity_ids[i],
            "event_time": int(matrix.event_times[i]),
            "computed_at": int(matrix.event_times[i]),
            "feature_set": matrix.feature_set,
            "feature_set_version": matrix.feature_set_version,
            "feature_set_hash": matrix.feature_set_hash,
            "names": list(matrix.names) if WITH_NAMES else [],
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
    records = _vectors(n)
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
            "STREAMML_SCORER_CHECK_NAMES": "true" if CHECK_NAMES else "false",
        },
        http_port=port,
    ).start()
    try:
        out = consume_all(bootstrap, f"{prefix}predictions", expect=len(records), timeout_s=600)
    finally:
        proc.stop()
    stamps = sorted(m.timestamp()[1] for m in out)
    span_s = max((stamps[-1] - stamps[0]) / 1000.0, 1e-3)
    predictions = [codec.decode(m.value() or b"", "Prediction") for m in out]
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


class _ConstantScorer(Processor):
    """The scorer's I/O without the scorer: one constant Prediction per FeatureVector."""

    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, records: Sequence[Record], state: State) -> Result:
        outputs = []
        for record in records:
            v = record.value
            outputs.append(
                Output(
                    self.output,
                    "Prediction",
                    {
                        "event_id": v["event_id"],
                        "entity_id": v["entity_id"],
                        "event_time": v["event_time"],
                        "scored_at": 0,
                        "model_name": "noop",
                        "model_version": "0",
                        "score": 0.0,
                        "threshold": 0.5,
                        "decision": False,
                        "route": "primary",
                        "fallback_reason": None,
                        "latency_ms": 0.0,
                        "feature_set_hash": v["feature_set_hash"],
                        "features_computed_at": v["computed_at"],
                        "segments": v["categories"],
                    },
                    key=v["entity_id"],
                )
            )
        return Result(outputs=outputs)


def _serve_noop() -> int:
    """Child process: the runtime with :class:`_ConstantScorer` (settings from the env)."""
    kafka = KafkaSettings()
    runtime = StreamRuntime(
        service="bench-noop-scorer",
        processor=_ConstantScorer(kafka.topic("predictions")),
        inputs={kafka.topic("features"): os.environ["BENCH_INPUT_SCHEMA"]},
        kafka=kafka,
        settings=RuntimeSettings(
            instance_id="bench", batch_max_records=int(os.environ["BENCH_BATCH"])
        ),
        http=HttpSettings(port=int(os.environ["BENCH_HTTP_PORT"])),
    )
    return runtime.run()


def measure_same_input_noop(bootstrap: str, n: int, partitions: int, batch: int) -> float:
    """Records/s of the runtime with a constant processor on the scorer's own input.

    Runs as a child process, like the scorer, so both are timed the same way.
    """
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, prefix, partitions=partitions)
    records = _vectors(n)
    produce(bootstrap, f"{prefix}features", records)
    port = free_port()
    proc = ServiceProcess(
        ["-m", "benchmarks.scorer", "--serve-noop"],
        {
            "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
            "BENCH_HTTP_PORT": str(port),
            "BENCH_BATCH": str(batch),
            "BENCH_INPUT_SCHEMA": VECTOR_SCHEMA if CHECK_NAMES else NAMELESS_VECTOR,
        },
        http_port=port,
    ).start()
    try:
        out = consume_all(bootstrap, f"{prefix}predictions", expect=len(records), timeout_s=600)
    finally:
        proc.stop()
    stamps = sorted(m.timestamp()[1] for m in out)
    return len(out) / max((stamps[-1] - stamps[0]) / 1000.0, 1e-3)


def main() -> None:
    if sys.argv[1:] == ["--serve-noop"]:
        sys.exit(_serve_noop())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--train-events", type=int, default=8000)
    parser.add_argument(
        "--without-names",
        action="store_true",
        help="Send vectors with empty `names` (allowed by the schema): 2.3 KB -> 0.9 KB, "
        "about a third of the decode time.",
    )
    parser.add_argument(
        "--check-names",
        action="store_true",
        help="Read the vectors with their names (scorer setting check_names), as before the "
        "FeatureVector[-names] projection.",
    )
    args = parser.parse_args()
    global WITH_NAMES, CHECK_NAMES  # noqa: PLW0603 (benchmark switches, set once before any work)
    WITH_NAMES = not args.without_names
    CHECK_NAMES = args.check_names
    if args.records < 1000 or args.partitions < 1 or args.batch < 1 or args.rounds < 1:
        parser.error("--records >= 1000, --partitions >= 1, --batch >= 1, --rounds >= 1")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    results: dict[str, Any] = {
        "benchmark": "scorer",
        "bootstrap": bootstrap,
        "vectors_with_names": WITH_NAMES,
        "scorer_input_schema": VECTOR_SCHEMA if CHECK_NAMES else NAMELESS_VECTOR,
    }

    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scorer-bench-") as tmp:
        root = Path(tmp)
        private_path, public_path = generate_keypair(root / "keys")
        train_and_sign(
            events=args.train_events, seed=7, out=root / "models",
            key=load_private_key(private_path),
        )  # fmt: skip
        # Interleaved: scorer, no-op, same-input no-op, then again; each round's ratio is
        # read against the no-op measured minutes apart on the same machine.
        for n in range(args.rounds):
            scorer = measure_scorer(
                bootstrap, root / "models", public_path, args.records, args.partitions,
                args.batch,
            )  # fmt: skip
            noop = float(measure_noop_runtime(bootstrap, args.records, args.partitions))
            same_input = measure_same_input_noop(
                bootstrap, args.records, args.partitions, args.batch
            )
            row = {
                "scorer": scorer,
                "predictions_per_s": scorer["predictions_per_s"],
                "noop_records_per_s": round(noop, 1),
                "noop_same_input_records_per_s": round(same_input, 1),
                "share_of_noop": round(scorer["predictions_per_s"] / noop, 3),
                "share_of_noop_same_input": round(scorer["predictions_per_s"] / same_input, 3),
            }
            rounds.append(row)
            print(
                f"round {n + 1}: scorer {row['predictions_per_s']:.0f}/s, no-op {noop:.0f}/s "
                f"({row['share_of_noop']}), same-input no-op {same_input:.0f}/s "
                f"({row['share_of_noop_same_input']})",
                flush=True,
            )
    results["noop_source"] = "benchmarks.runtime.measure_noop_runtime"
    results["method"] = (
        f"{args.rounds} interleaved rounds of (scorer process, Event no-op, same-input no-op); "
        "share_of_noop = median over rounds of the round's scorer/no-op ratio"
    )
    results["scorer"] = rounds[-1]["scorer"]
    results["rounds"] = [{k: v for k, v in r.items() if k != "scorer"} for r in rounds]
    for key in ("share_of_noop", "share_of_noop_same_input"):
        ratios = [r[key] for r in rounds]
        results[key] = round(statistics.median(ratios), 3)
        results[f"{key}_min"] = min(ratios)
        results[f"{key}_max"] = max(ratios)
    for key in ("predictions_per_s", "noop_records_per_s", "noop_same_input_records_per_s"):
        results[key] = round(statistics.median(r[key] for r in rounds), 1)
    results["model_ms_per_batch_p50"] = rounds[-1]["scorer"]["model_ms_per_batch_p50"]
    results["model_ms_per_batch_p99"] = rounds[-1]["scorer"]["model_ms_per_batch_p99"]
    results["target_share_of_noop"] = 0.6
    print(json.dumps(results))


if __name__ == "__main__":
    main()
