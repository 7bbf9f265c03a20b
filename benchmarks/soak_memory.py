"""Where the performance service's memory goes in the soak: live state or the allocator.

The soak (benchmarks/soak.py) saw the performance service's RSS grow by steps while its
join store stayed flat. This drives the service's pure core in one process with the soak's
shape of input, and at every sample sets RSS beside what Python still holds:

* predictions at ``--rate`` per second of wall time with event time compressed like the
  soak's (x180 at its defaults), 90% primary and 10% canary, two segment fields, and every
  event's label at its event time plus the demo's delay (minutes to days; the ones past
  the 1-day horizon are rejected as late, as in the soak);
* the soak's settings of the service (``services.demo.plan.service_env`` plus the soak's
  retention: label horizon 1 day, late-label memory 12 h, a report every hour of event time),
  with the calibration maps of the demo's cached models, so the estimator runs too;
* micro-batches of ``--batch`` records (the runtime's default 500) committed one by one;
  once the retention is full, one catch-up burst of ``--burst`` records in batches of
  ``--burst-batch`` (what a restarted service reads after its restore), then steady again.

Each sample: RSS (/proc), the bytes Python's allocators hold for live objects
(``tracemalloc``, its own overhead subtracted from RSS), glibc's heap (``mallinfo2``: in use,
free but kept), the store sizes. At the end ``malloc_trim(0)`` shows how much of the RSS was
free memory glibc had kept. Two child processes run interleaved for ``--rounds``: with the
burst and without it (the same-run baseline).

Usage: ``python -m benchmarks.soak_memory [--predictions 1500000] [--rounds 1]``. The last
line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamml import memory  # noqa: E402  (after the path is set)

T0 = 1_790_000_000_000
CHANGE = struct.Struct("<BIi")  # store number, key length, value length (-1: a tombstone)
COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "PL"]
CHANNELS = ["pos", "ecommerce", "atm", "moto"]


def rss_bytes() -> int:
    rss = memory.rss_bytes()
    if rss is None:
        raise SystemExit("error: this benchmark reads /proc (Linux only)")
    return rss


def heap() -> dict[str, int]:
    """glibc's heap: bytes in use, free but kept (fordblks), in mmapped chunks."""
    usage = memory.heap_bytes()
    if usage is None:
        raise SystemExit("error: this benchmark reads glibc's mallinfo2 (glibc 2.33+)")
    return {"in_use": usage["in_use"], "free_kept": usage["free"], "mmapped": usage["mmapped"]}


def pymalloc() -> dict[str, int]:
    """Python's small-object allocator (sys._debugmallocstats): bytes in its arenas, and
    in live blocks (the rest is free space it keeps: available blocks, empty pools)."""
    fd, path = tempfile.mkstemp()
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    text = Path(path).read_text()
    os.unlink(path)
    figures = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.startswith("# bytes in allocated blocks"):
            figures["allocated"] = int(value.replace(",", ""))
        elif name.startswith("Total") and "arenas" not in figures:
            figures["arenas"] = int(value.replace(",", ""))
    return figures


def soak_settings(run_dir: Path) -> Any:
    """The performance settings the soak gives the service (and the demo's models)."""
    from benchmarks.soak import LABEL_HORIZON_S, LATE_LABEL_MEMORY_S
    from services.demo.models import ModelCache, cache_root
    from services.demo.plan import DemoPlan, service_env
    from services.performance.settings import PerformanceSettings

    plan = DemoPlan(duration_s=600, rate=1000, entities=5000, event_rate_per_s=1000 / 180,
                    drift_fraction=2.0, monitor_after_fraction=0.0, canary_share=0.1,
                    seed=2026, partitions=2, run_dir=run_dir, topic_prefix="soak.")  # fmt: skip
    cache = ModelCache(events=plan.train_events, seed=plan.seed, root=cache_root())
    if not cache.ready:
        cache.build()
    cache.install(plan.models_dir, plan.keys_dir)
    env = service_env(plan, "performance", bootstrap="127.0.0.1:1", http_port=1,
                      reference=run_dir / "unused.json")  # fmt: skip
    env["STREAMML_PERFORMANCE_LABEL_HORIZON"] = str(LABEL_HORIZON_S)
    env["STREAMML_PERFORMANCE_LATE_LABEL_MEMORY"] = str(LATE_LABEL_MEMORY_S)
    env["STREAMML_PERFORMANCE_REPORT_INTERVAL"] = "1h"
    os.environ.update({k: v for k, v in env.items() if k.startswith("STREAMML_")})
    return PerformanceSettings()


class SoakInput:
    """The performance service's input in the soak: predictions at a steady pace of event
    time, 10% canary, and each event's label once event time passes its delay."""

    def __init__(self, predictions_topic: str, labels_topic: str, step_ms: float, seed: int):
        self.predictions_topic, self.labels_topic = predictions_topic, labels_topic
        self.step_ms = step_ms
        self.rng = random.Random(seed)
        self.pending: list[tuple[int, int, dict[str, Any]]] = []  # (labeled_at, i, label)
        self.offsets = {predictions_topic: 0, labels_topic: 0}

    def batch(self, start: int, count: int) -> list[Any]:
        """Predictions ``start`` to ``start + count`` and the labels due meanwhile."""
        from streamml.processor import Record
        from streamml.synthetic import label_delay_ms

        rng, pending, offsets = self.rng, self.pending, self.offsets
        predictions_topic, labels_topic, step_ms = (
            self.predictions_topic, self.labels_topic, self.step_ms
        )  # fmt: skip
        records = []
        for i in range(start, start + count):
            t = int(T0 + i * step_ms)
            canary = rng.random() < 0.1
            score = rng.random() ** 3
            value = {
                "event_id": f"evt-{i:012d}", "entity_id": f"c{i % 5000}", "event_time": t,
                "scored_at": t, "model_name": "fraud-logreg" if canary else "fraud-gbt",
                "model_version": "1" if canary else "2", "score": score, "threshold": 0.5,
                "decision": score >= 0.5, "route": "canary" if canary else "primary",
                "fallback_reason": None, "latency_ms": 0.4, "feature_set_hash": "h",
                "features_computed_at": t,
                "segments": {"country": rng.choice(COUNTRIES), "channel": rng.choice(CHANNELS)},
            }  # fmt: skip
            records.append(Record(predictions_topic, 0, offsets[predictions_topic], t, None,
                                  value, (), "Prediction"))  # fmt: skip
            offsets[predictions_topic] += 1
            label = {"event_id": value["event_id"], "entity_id": value["entity_id"],
                     "label": int(rng.random() < score), "labeled_at": t + label_delay_ms(rng),
                     "source": "bench"}  # fmt: skip
            heapq.heappush(pending, (label["labeled_at"], i, label))
            while pending and pending[0][0] <= t:
                due = heapq.heappop(pending)[2]
                records.append(Record(labels_topic, 0, offsets[labels_topic], due["labeled_at"],
                                      None, due, (), "Label"))  # fmt: skip
                offsets[labels_topic] += 1
        return records


def restore(path: Path, stores: Any) -> int:
    """Apply the changelog file to the stores, as the runtime's restore does; its records."""
    count = 0
    with path.open("rb") as source:
        header = source.read(CHANGE.size)
        while header:
            number, key_size, value_size = CHANGE.unpack(header)
            key = source.read(key_size)
            value = source.read(value_size) if value_size >= 0 else None
            stores[number].restore(0, key, value)
            count += 1
            header = source.read(CHANGE.size)
    for store in stores:  # as the runtime does after a restore
        store.settle(0)
    return count


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process: fill, steady, (restart or burst,) steady; samples.

    ``--mode steady``: micro-batches all along. ``burst``: at the restart point one
    catch-up burst, as after a restart, but no restore. ``write``: up to the restart point,
    writing every committed change to ``--changelog`` (the store's changelog). ``restore``:
    generates the records up to the restart point without processing them (the same
    random stream), restores the stores from ``--changelog`` as the runtime does, then the
    catch-up burst and steady: a restarted service."""
    from services.performance.processor import JOIN_STORE, PerformanceProcessor
    from streamml.state import State

    settings = soak_settings(Path(args.dir))
    processor = PerformanceProcessor.from_settings(settings, clock=lambda: 0.0)
    state = State(processor.stores)
    for store in state.stores:
        store.assign(0)
    predictions_topic = settings.kafka.topic(settings.predictions_topic)
    labels_topic = settings.kafka.topic(settings.labels_topic)
    processor.on_assigned([(predictions_topic, 0), (labels_topic, 0)], state)
    step_ms = args.compression * 1000.0 / args.rate
    source = SoakInput(predictions_topic, labels_topic, step_ms, args.seed)
    batch_of = source.batch
    samples: list[dict[str, Any]] = []
    changelog = open(args.changelog, "wb") if args.mode == "write" else None  # noqa: SIM115
    changelog_records = 0

    def commit() -> None:
        nonlocal changelog_records
        if changelog is not None:
            for number, store in enumerate(state.stores):
                for _, key, value in store.pending():
                    size = -1 if value is None else len(value)
                    changelog.write(CHANGE.pack(number, len(key), size) + key + (value or b""))
                    changelog_records += 1
        state.commit()

    def sample(done: int, phase: str) -> None:
        traced, _ = tracemalloc.get_traced_memory()
        overhead = tracemalloc.get_tracemalloc_memory()
        samples.append({
            "predictions": done, "phase": phase, "rss": rss_bytes() - overhead,
            "traced": traced, "heap": heap(), "pymalloc": pymalloc(),
            "join_keys": state.store(JOIN_STORE).size(),
            "store_keys": {s.name: s.size() for s in state.stores},
            "label_queue": len(source.pending),
        })  # fmt: skip

    # Fill until the longest retention (horizon + late-label memory) is full, then go on.
    full_at = int((settings.label_horizon + settings.late_label_memory).total_seconds()
                  * 1000 / step_ms)  # fmt: skip
    restart_at = int(full_at * 1.3) // args.batch * args.batch
    done = 0
    phase = "fill"
    started = time.perf_counter()
    if args.mode == "restore":
        while done < restart_at:
            batch_of(done, args.batch)  # the same random stream, not processed
            done += args.batch
        sample(done, "before_restore")
        restore_started = time.perf_counter()
        changelog_records = restore(Path(args.changelog), state.stores)
        processor.on_assigned([(predictions_topic, 0), (labels_topic, 0)], state)
        restore_s = time.perf_counter() - restore_started
        sample(done, "restored")
        phase = "steady"
    stop = restart_at if args.mode == "write" else args.predictions
    while done < stop:
        if args.mode in ("burst", "restore") and phase == "steady" and done >= restart_at:
            phase = "burst"
            for _ in range(args.burst // args.burst_batch):
                processor.process(batch_of(done, args.burst_batch), state)
                commit()
                done += args.burst_batch
            sample(done, phase)
            phase = "after_burst"
            continue
        count = min(args.batch, stop - done)
        processor.process(batch_of(done, count), state)
        commit()
        done += count
        if phase == "fill" and done >= full_at:
            phase = "steady"
        if done % args.sample_every < count:
            sample(done, phase)
    elapsed = time.perf_counter() - started
    if changelog is not None:
        changelog.close()
    gc.collect()
    sample(done, "end")
    before_trim = rss_bytes() - tracemalloc.get_tracemalloc_memory()
    memory.release_free_memory()
    after_trim = rss_bytes() - tracemalloc.get_tracemalloc_memory()
    return {
        "mode": args.mode, "full_at_predictions": full_at, "restart_at_predictions": restart_at,
        "changelog_records": changelog_records,
        "restore_s": round(restore_s, 1) if args.mode == "restore" else None,
        "elapsed_s": round(elapsed, 1), "samples": samples,
        "rss_before_trim": before_trim, "rss_after_trim": after_trim,
    }  # fmt: skip


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """RSS and live bytes: once full, at the restart point, after it, at the end, trimmed."""
    mib = 2**20
    samples = run["samples"]

    def at(*phases: str, last: bool = False) -> dict[str, Any] | None:
        chosen = [s for s in samples if s["phase"] in phases]
        return (chosen[-1] if last else chosen[0]) if chosen else None

    def figures(s: dict[str, Any] | None) -> dict[str, Any] | None:
        if s is None:
            return None
        return {"predictions": s["predictions"], "rss_mib": round(s["rss"] / mib, 1),
                "traced_mib": round(s["traced"] / mib, 1) if s["traced"] else None,
                "pymalloc_arenas_mib": round(s["pymalloc"]["arenas"] / mib, 1),
                "pymalloc_live_mib": round(s["pymalloc"]["allocated"] / mib, 1),
                "glibc_in_use_mib": round(s["heap"]["in_use"] / mib, 1),
                "glibc_free_kept_mib": round(s["heap"]["free_kept"] / mib, 1),
                "join_keys": s["join_keys"], "store_keys": s["store_keys"]}  # fmt: skip

    return {
        "mode": run["mode"],
        "elapsed_s": run["elapsed_s"],
        "changelog_records": run["changelog_records"],
        "restore_s": run["restore_s"],
        "full": figures(at("steady")),
        "restart_point": figures(at("steady", "before_restore", last=True)),
        "restored": figures(at("restored")),
        "after_burst": figures(at("burst")),
        "end": figures(at("end")),
        "rss_after_malloc_trim_mib": round(run["rss_after_trim"] / mib, 1),
        "rss_trimmed_mib": round((run["rss_before_trim"] - run["rss_after_trim"]) / mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=300_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="Soak's events/s.")
    parser.add_argument("--compression", type=float, default=1080.0,
                        help="Event-time compression (x1080: a 10-minute soak).")  # fmt: skip
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--burst", type=int, default=60_000,
                        help="Predictions read in the catch-up after the restart.")  # fmt: skip
    parser.add_argument("--burst-batch", type=int, default=500)
    parser.add_argument("--sample-every", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tracemalloc", action="store_true", help="Also trace (slow).")
    parser.add_argument("--mode", default="steady", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--changelog", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    problems = [
        (args.predictions < 10_000, "--predictions must be at least 10000"),
        (args.batch < 1 or args.burst_batch < 1, "--batch and --burst-batch must be >= 1"),
        (args.burst < 0, "--burst must be >= 0"),
        (args.rounds < 1, "--rounds must be at least 1"),
    ]
    for bad, message in problems:
        if bad:
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2)
    if args.child:
        if args.tracemalloc:
            tracemalloc.start()
        print(json.dumps(run_child(args)))
        return
    modes = ("steady", "burst", "restore")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="streamml-soak-memory-") as tmp:
        changelog = str(Path(tmp) / "changelog.bin")

        def child(mode: str) -> dict[str, Any]:
            command = [sys.executable, "-m", "benchmarks.soak_memory", "--child",
                       f"--mode={mode}", f"--dir={tmp}", f"--changelog={changelog}"] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                if k not in {"child", "dir", "changelog", "mode", "rounds", "tracemalloc"}
            ] + (["--tracemalloc"] if args.tracemalloc else [])  # fmt: skip
            out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
            return dict(json.loads(out.stdout.strip().splitlines()[-1]))

        for round_no in range(args.rounds):
            child("write")
            for mode in modes:
                summary = summarise(child(mode))
                runs[mode].append(summary)
                print(f"round {round_no + 1} {mode}: {json.dumps(summary)}", flush=True)
    end_rss = {m: statistics.median(r["end"]["rss_mib"] for r in rs) for m, rs in runs.items()}
    print(json.dumps({
        "rounds": args.rounds, "runs": runs, "end_rss_mib_median": end_rss,
        "restore_minus_steady_end_rss_mib": round(end_rss["restore"] - end_rss["steady"], 1),
        "burst_minus_steady_end_rss_mib": round(end_rss["burst"] - end_rss["steady"], 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
