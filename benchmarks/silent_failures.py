"""The silent-failure suite: every failure-injection scenario x seeds on the real pipeline.

Each run is ``streamml demo run --scenario NAME --seed SEED --headless`` against one
local broker (four service processes, the producer, the observer: see
:mod:`services.demo.scenarios`), with a fresh topic prefix per run. Runs of the same seed
go together and ``--jobs`` of them at a time, so the scenarios of a round share the
machine's load (the control run of each seed is the same-run baseline: every alert in it
is a false alarm). The models are trained once (``--model-seed``) and cached. A
scenario that only labels reveal (concept drift) runs on after its injection until its
labels can have come (60 minutes of event time, 90 s at the default rate; see
``run_length`` in :mod:`services.demo.scenarios`), injected at the same point as the
others. The suite fills the model and reference caches before the runs
(:func:`fill_caches`), and each run's ``phases_s`` (broker and topics, models, services
ready, traffic, drain, start and stop) says where its wall time went.

Figures (the last line, one JSON object):

* ``detection_rate``: failure runs (scenarios x seeds, the control excluded) with an alert
  after the injection, over all failure runs;
* ``control_false_alarms``: alerts in the control runs (target 0), and
  ``false_alarms_before_injection`` in the failure runs;
* per scenario: detections, the first signal of each run, the median time to the first
  alert after the injection in wall seconds (``_wall_s``) and in event time, in seconds
  (``_event_s``) and minutes (``_event_min``): the targets are 60 s of wall time and 5
  minutes (300 s) of event time;
* per scenario also the median of the first alert's own event time (its window's end)
  after the injection: the event time the system needed to decide, without the lag in
  getting the alert out, which the compressed clock multiplies (x40: 1 s of lag is 40 s
  of event time);
* ``targets``: each target of issue 19 with the measured value and whether it holds.

Usage: ``python -m benchmarks.silent_failures [--seeds 5] [--jobs 3] [--quick]``;
``--quick`` runs three scenarios (control, stale-partition, duplicate-storm) with one
seed, a few minutes (the integration test's run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.demo.plan import DemoPlan  # noqa: E402
from services.demo.scenarios import SCENARIOS, run_length  # noqa: E402

QUICK_SCENARIOS = ("control", "stale-partition", "duplicate-storm")
WALL_TARGET_S = 60.0
EVENT_TARGET_S = 300.0
DETECTION_TARGET = 0.95
MONITOR_AFTER = DemoPlan.monitor_after_fraction
EVENTS_PER_EVENT_S = DemoPlan.event_rate_per_s


def run_one(args: argparse.Namespace, bootstrap: str, scenario: str, seed: int) -> dict[str, Any]:
    """One demo run; its scenario outcome (or why there is none)."""
    run_dir = Path(args.out) / f"{scenario}-seed{seed}"
    # A label-based scenario runs on after the injection until its labels can have come.
    duration, inject_at, monitor_after = run_length(
        SCENARIOS[scenario], duration_s=args.duration, inject_at=args.inject_at,
        monitor_after=args.monitor_after, compression=args.rate / EVENTS_PER_EVENT_S,
    )  # fmt: skip
    command = [
        sys.executable, "-m", "streamml.cli", "demo", "run", "--headless",
        "--scenario", scenario, "--seed", str(seed), "--model-seed", str(args.model_seed),
        "--duration", str(duration), "--rate", str(args.rate),
        "--drift-at", str(inject_at), "--monitor-after", str(monitor_after),
        "--bootstrap", bootstrap, "--dir", str(run_dir), "--drain-timeout", "30",
    ]  # fmt: skip
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "demo.log", "wb") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    result: dict[str, Any] = {
        "scenario": scenario,
        "seed": seed,
        "exit_code": code,
        "wall_s": round(time.monotonic() - started, 1),
    }
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        result.update(summary["figures"]["scenario"])
        phases = dict(summary["figures"].get("phases_s") or {})
        # the rest: the demo's start (imports), the summary and report, stopping services
        phases["start_and_stop"] = round(result["wall_s"] - sum(phases.values()), 2)
        result["phases_s"] = phases
    except (OSError, ValueError, KeyError) as exc:
        result["error"] = f"no scenario outcome in {run_dir}: {exc}"
    print(
        f"silent-failures {scenario} seed {seed}: exit {code}, "
        f"first {result.get('first_signal')} after {result.get('time_to_alert_wall_s')} s wall "
        f"/ {result.get('time_to_alert_event_s')} s event, false alarms "
        f"{result.get('false_alarms')} ({result['wall_s']} s)",
        flush=True,
    )
    return result


def fill_caches(args: argparse.Namespace, names: list[str]) -> None:
    """Train the demo models and build the drift reference of every run length once, here,
    before the runs (which then only copy them): the runs no longer wait for a first run
    that fills the caches alone, and no two runs build the same reference at once."""
    from services.demo.models import PRIMARY_NAME, ModelCache, cache_root

    cache = ModelCache(events=DemoPlan.train_events, seed=args.model_seed, root=cache_root())
    if not cache.ready:
        cache.build()
    primary = cache.path / "models" / PRIMARY_NAME / "1"
    for name in names:
        duration, _, _ = run_length(
            SCENARIOS[name], duration_s=args.duration, inject_at=args.inject_at,
            monitor_after=args.monitor_after, compression=args.rate / EVENTS_PER_EVENT_S,
        )  # fmt: skip
        events = max(1, int(args.rate * duration))
        if events > cache.events and not cache.has_reference(events):
            cache.reference_for(events, primary)


def _present(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in runs if r.get(key) is not None]


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _median_phases(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per phase of a run (``phases_s``), its median over the runs that reached it."""
    phases = [r.get("phases_s", {}) for r in runs]
    names = dict.fromkeys(name for p in phases for name in p)
    return {name: _median([float(p[name]) for p in phases if name in p]) for name in names}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The suite's figures and targets from the runs' outcomes (pure)."""
    per: dict[str, Any] = {}
    for name in dict.fromkeys(r["scenario"] for r in runs):
        mine = [r for r in runs if r["scenario"] == name]
        scenario = SCENARIOS[name]
        event_s = _median(_present(mine, "time_to_alert_event_s"))
        per[name] = {
            "failure": scenario.failure,
            "runs": len(mine),
            "detected": sum(1 for r in mine if r.get("detected")),
            "first_signals": dict(Counter(str(r.get("first_signal")) for r in mine)),
            "expected_signals": list(scenario.expected),
            "visible_before_labels": scenario.before_labels,
            "median_time_to_alert_wall_s": _median(_present(mine, "time_to_alert_wall_s")),
            "median_time_to_alert_event_s": event_s,
            # the same in minutes of event time (the targets' unit); wall time is seconds
            "median_time_to_alert_event_min": None if event_s is None else round(event_s / 60, 1),
            "median_alert_event_time_after_injection_s": _median(
                _present(mine, "alert_event_time_after_injection_s")
            ),
            "event_s_after_injection_needed": scenario.event_s_after or None,
            "false_alarms": sum(int(r.get("false_alarms") or 0) for r in mine),
            "median_run_wall_s": _median(_present(mine, "wall_s")),
            # clean traffic's largest gap of a read-up partition (before the injection)
            "max_partition_gap_event_s": max(
                _present(mine, "largest_partition_gap_event_s"), default=None
            ),
            "median_phases_s": _median_phases(mine),
            "errors": [r["error"] for r in mine if "error" in r],
        }
    failures = [r for r in runs if r["scenario"] != "control"]
    control = [r for r in runs if r["scenario"] == "control"]
    detected = sum(1 for r in failures if r.get("detected"))
    rate = detected / len(failures) if failures else None
    control_alarms = sum(int(r.get("false_alarms") or 0) for r in control)
    before = sum(int(r.get("false_alarms") or 0) for r in failures)
    slow = {
        name: {"wall_s": p["median_time_to_alert_wall_s"],
               "event_s": p["median_time_to_alert_event_s"]}
        for name, p in per.items()
        if name != "control" and p["visible_before_labels"] and (
            p["median_time_to_alert_wall_s"] is None
            or p["median_time_to_alert_wall_s"] >= WALL_TARGET_S
            or p["median_time_to_alert_event_s"] is None
            or p["median_time_to_alert_event_s"] >= EVENT_TARGET_S
        )
    }  # fmt: skip
    return {
        "detection_rate": round(rate, 3) if rate is not None else None,
        "failure_runs": len(failures),
        "detected_runs": detected,
        "control_runs": len(control),
        "control_false_alarms": control_alarms,
        "false_alarms_before_injection": before,
        "scenarios": per,
        "targets": {
            "detection_rate_at_least_0.95": rate is not None and rate >= DETECTION_TARGET,
            "zero_alerts_in_control": bool(control) and control_alarms == 0,
            "median_alert_under_5min_event_and_60s_wall": not slow,
            "scenarios_missing_the_time_target": slow,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 scenarios, 1 seed.")
    parser.add_argument("--seeds", type=int, default=5, help="Traffic seeds per scenario.")
    parser.add_argument("--scenarios", default="", help="Comma-separated (default: all).")
    parser.add_argument("--jobs", type=int, default=3, help="Runs at a time.")
    parser.add_argument("--duration", type=float, default=45.0, help="Seconds of traffic.")
    parser.add_argument("--rate", type=float, default=200.0, help="Events per wall second.")
    parser.add_argument(
        "--inject-at",
        type=float,
        default=0.5,
        help="Share of the duration (after the drift service's warm-up, 15 %%).",
    )
    parser.add_argument(
        "--monitor-after",
        type=float,
        default=MONITOR_AFTER,
        help="Share of the duration before the drift service monitors (0: from the start).",
    )
    parser.add_argument("--model-seed", type=int, default=2026)
    parser.add_argument("--bootstrap", default=None, help="A running broker (else one is started).")
    parser.add_argument("--out", default=None, help="Run directories (default: a temp dir).")
    args = parser.parse_args()
    names = [n for n in args.scenarios.split(",") if n] or (
        list(QUICK_SCENARIOS) if args.quick else list(SCENARIOS)
    )
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or args.seeds < 1 or args.jobs < 1:
        parser.error(f"--scenarios must name scenarios of {', '.join(SCENARIOS)}; "
                     "--seeds and --jobs at least 1")  # fmt: skip
    seeds = [1] if args.quick else list(range(1, args.seeds + 1))
    args.out = args.out or tempfile.mkdtemp(prefix="silent-failures-")
    started = time.monotonic()
    broker = None
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        from streamml.broker import LocalBroker, free_port

        broker = LocalBroker(run_dir=Path(args.out) / "kafka", port=free_port())
        broker.start()
        bootstrap = broker.bootstrap
    try:
        fill_caches(args, names)
        # Seed-major order: the scenarios of one seed run side by side (interleaved rounds);
        # within a seed the longest runs first, so the suite does not end on one of them.
        ordered = sorted(names, key=lambda name: -SCENARIOS[name].event_s_after)
        jobs = [(name, seed) for seed in seeds for name in ordered]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            runs = list(pool.map(lambda job: run_one(args, bootstrap, *job), jobs))
    finally:
        if broker is not None:
            broker.stop()
    figures = aggregate(runs)
    figures.update(
        quick=args.quick,
        seeds=len(seeds),
        jobs=args.jobs,
        duration_s=args.duration,
        rate=args.rate,
        suite_wall_s=round(time.monotonic() - started, 1),
        out=args.out,
        runs=[{k: r.get(k) for k in ("scenario", "seed", "detected", "first_signal",
                                      "time_to_alert_wall_s", "time_to_alert_event_s",
                                      "false_alarms", "exit_code", "wall_s")} for r in runs],
    )  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
