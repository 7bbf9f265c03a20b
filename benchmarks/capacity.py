"""Per-unit figures for docs/capacity.md: CPU per record of each pure core, bytes per state unit.

No broker. On one core (this process), with production defaults:

* features: CPU microseconds per event of the processor (``benchmarks.features.measure_core``);
  heap bytes per dedup key (``measure_dedup_bytes_per_key``) and per entity history
  (``measure_entity_bytes``: the ``entities`` store after ``--events`` events over
  ``--entities`` cards);
* drift: feature values/s of the processor (``benchmarks.drift.measure_core``);
* performance: joins/s of the processor (``benchmarks.performance.measure_core_joins``)
  and heap bytes per pending prediction (``measure_pending_memory``).

The runtime's own cost per record (poll, decode, transaction) and the scorer's are on the
broker; their figures come from benchmarks/runtime.py and benchmarks/scorer.py.
CPU figures use ``time.process_time`` where the underlying benchmark does (features) and
wall time otherwise: on a loaded machine read the load average printed beside them.

Usage: ``python -m benchmarks.capacity [--events 40000] [--entities 20000]
[--dedup-keys 1000000] [--pending 1000000]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import drift as drift_bench  # noqa: E402
from benchmarks import features as features_bench  # noqa: E402
from benchmarks import performance as performance_bench  # noqa: E402
from services.features.processor import ENTITIES_STORE, FeaturesProcessor  # noqa: E402
from services.features.settings import FeaturesSettings  # noqa: E402
from streamml.codec import AvroCodec  # noqa: E402
from streamml.processor import Record  # noqa: E402
from streamml.state import State  # noqa: E402
from streamml.synthetic import generate_events  # noqa: E402


def measure_entity_bytes(n_events: int, n_entities: int) -> dict[str, Any]:
    """Heap bytes per entity history in the features service's ``entities`` store.

    The events go through the processor as the service runs it; the committed store is
    then copied key by key into a plain dict (fresh bytes objects) under tracemalloc, so
    the figure is what the store holds (dict slot, key, packed history) without the
    processor's bounded cache of decoded histories (``DEFAULT_HISTORY_CACHE_SIZE``).
    """
    codec = AvroCodec()
    values = [e for e, _ in generate_events(n_events, seed=11, n_entities=n_entities)]
    records = [
        Record("events", 0, i, 0, v["entity_id"].encode(), v, (), "Event")
        for i, v in enumerate(values)
    ]
    processor = FeaturesProcessor.from_settings(FeaturesSettings())
    processor.on_codec(codec)
    state = State(processor.stores)
    for store in state.stores:
        store.assign(0)
    for start in range(0, len(records), 1000):
        processor.process(records[start : start + 1000], state)
        state.commit()
    items = list(state.store(ENTITIES_STORE).items(0))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    copy = {bytes(bytearray(k)): bytes(bytearray(v)) for k, v in items}
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "events": n_events,
        "entities_held": len(copy),
        "events_per_entity": round(n_events / max(len(copy), 1), 1),
        "bytes_per_entity": round(held / max(len(copy), 1), 1),
        "serialized_bytes_per_entity": round(sum(len(v) for v in copy.values()) / len(copy), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--dedup-keys", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--drift-records", type=int, default=20_000)
    parser.add_argument("--joins", type=int, default=40_000)
    args = parser.parse_args()
    if min(args.events, args.entities, args.dedup_keys, args.pending, args.joins) < 1000:
        parser.error("every count must be at least 1000")
    load = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    features_core = features_bench.measure_core(args.events, repeats=2)
    results: dict[str, Any] = {
        "benchmark": "capacity",
        "cpus": os.cpu_count(),
        "load_at_start": load,
        "features": {
            "process_cpu_us_per_event": features_core["process_us"],
            "core_events_per_cpu_s": round(1e6 / features_core["process_us"], 1),
            "dedup": features_bench.measure_dedup_bytes_per_key(args.dedup_keys),
            "entities": measure_entity_bytes(args.events, args.entities),
        },
        "drift": drift_bench.measure_core(args.drift_records),
        "performance": {
            "core": performance_bench.measure_core_joins(args.joins),
            "pending": performance_bench.measure_pending_memory(args.pending),
        },
    }
    results["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
