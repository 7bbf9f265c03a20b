"""The silent-failure suite: every failure-injection scenario x seeds on the real pipeline.

Each run is ``streamml demo run --scenario NAME --seed SEED --headless`` against one
local broker (four service processes, the producer, the observer: see
:mod:`services.demo.scenarios`), with a fresh topic prefix per run. Runs of the same seed
go together and ``--jobs`` of them at a time, so the scenarios of a round share the
machine's load (the control run of each seed is the same-run baseline: every alert in it
is a false alarm). The models are trained once (``--model-seed``) and cached; the first
run goes alone to fill the caches.

Figures (the last line, one JSON object):

* ``detection_rate``: failure runs (scenarios x seeds, the control excluded) with an alert
  after the injection, over all failure runs;
* ``control_false_alarms``: alerts in the control runs (target 0), and
  ``false_alarms_before_injection`` in the failure runs;
* per scenario: detections, the first signal of each run, the median time to the first
  alert in wall seconds and in event-time seconds after the injection;
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

from services.demo.scenarios import SCENARIOS  # noqa: E402

QUICK_SCENARIOS = ("control", "stale-partition", "duplicate-storm")
WALL_TARGET_S = 60.0
EVENT_TARGET_S = 300.0
DETECTION_TARGET = 0.95


def run_one(args: argparse.Namespace, bootstrap: str, scenario: str, seed: int) -> dict[str, Any]:
    """One demo run; its scenario outcome (or why there is none)."""
    run_dir = Path(args.out) / f"{scenario}-seed{seed}"
    command = [
        sys.executable, "-m", "streamml.cli", "demo", "run", "--headless",
        "--scenario", scenario, "--seed", str(seed), "--model-seed", str(args.model_seed),
        "--duration", str(args.duration), "--rate", str(args.rate),
        "--drift-at", str(args.inject_at), "--bootstrap", bootstrap, "--dir", str(run_dir),
        "--drain-timeout", "30",
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


def _present(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in runs if r.get(key) is not None]


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The suite's figures and targets from the runs' outcomes (pure)."""
    per: dict[str, Any] = {}
    for name in dict.fromkeys(r["scenario"] for r in runs):
        mine = [r for r in runs if r["scenario"] == name]
        scenario = SCENARIOS[name]
        per[name] = {
            "failure": scenario.failure,
            "runs": len(mine),
            "detected": sum(1 for r in mine if r.get("detected")),
            "first_signals": dict(Counter(str(r.get("first_signal")) for r in mine)),
            "expected_signals": list(scenario.expected),
            "visible_before_labels": scenario.before_labels,
            "median_time_to_alert_wall_s": _median(
                [
                    r["time_to_alert_wall_s"]
                    for r in mine
                    if r.get("time_to_alert_wall_s") is not None
                ]
            ),
            "median_time_to_alert_event_s": _median(
                [
                    r["time_to_alert_event_s"]
                    for r in mine
                    if r.get("time_to_alert_event_s") is not None
                ]
            ),
            "false_alarms": sum(int(r.get("false_alarms") or 0) for r in mine),
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
        help="Share of the duration (late enough for the drift service, which joins after "
        "15 %% and needs seconds to start on a loaded machine, to be watching).",
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
        # seed-major order: the scenarios of one seed run side by side (interleaved rounds)
        jobs = [(name, seed) for seed in seeds for name in names]
        runs = [run_one(args, bootstrap, *jobs[0])]  # alone: trains/caches models, reference
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            runs += list(pool.map(lambda job: run_one(args, bootstrap, *job), jobs[1:]))
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
