"""Detection quality of the drift service: delay, detection rate, false episodes.

Seeded synthetic streams (20 standard-normal features, one categorical attribute with
four categories, a beta-distributed score), a change point drawn at random per seed, run
through the service's processor built exactly as ``python -m services.drift`` builds it
(``services.drift.service.build_processor`` with default settings), its window reports
fed back as the ``drift.windows`` hop, in micro-batches of ``--batch`` records.

Anchors on the same streams in the same run:

* ``adwin_raw``: river's ADWIN with its defaults (delta 0.002), one per feature on the
  raw values of the whole stream (no partitions, no reference);
* ``ks_window``: per window of the same record count, scipy's two-sample KS of each
  feature against the 2,000-value reference sample, Bonferroni across the 20 features
  at 0.05.

Delay is in records (over all partitions) from the change point to the record the
episode opened on (for the service: the record whose detection opened it, or the last
record of the window whose test did). An episode opened before the change, or in a
stationary stream, is false; one opened after it on another feature is wrong-feature.

Usage: ``python -m benchmarks.drift_quality [--seeds 20] [--stationary-records 1000000]``
(``--quick`` for a smoke run). The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from river import drift as river_drift  # noqa: E402
from scipy import stats as scipy_stats  # type: ignore[import-untyped]  # noqa: E402

from services.drift.processor import DriftProcessor  # noqa: E402
from services.drift.reference import (  # noqa: E402
    Reference,
    reference_from_mapping,
    synthetic_reference,
)
from services.drift.service import build_processor  # noqa: E402
from services.drift.settings import DriftSettings  # noqa: E402
from streamml.processor import Record  # noqa: E402
from streamml.state import State  # noqa: E402

FEATURES = 20
NAMES = [f"x{i:02d}" for i in range(FEATURES)]
CHANNELS = {"pos": 0.5, "ecommerce": 0.35, "atm": 0.1, "moto": 0.05}
WINDOW_MS = 60_000
T0 = 1_790_000_000_000
DRIFTED = "x07"
STATIONARY = ((1_000, 1), (1_000, 4), (5_000, 1), (60_000, 1), (60_000, 4))
"""(records per window, partitions) of the stationary runs: 1,000 to 60,000, 1 and 4."""


def make_reference(seed: int = 7, rows: int = 20_000) -> Reference:
    """Training reference: 2,000-value samples (the service's default reference size)."""
    rng = np.random.default_rng(seed)
    columns = {name: rng.normal(size=rows) for name in NAMES}
    document = synthetic_reference(
        columns, score=rng.beta(1, 12, size=rows), categories={"channel": CHANNELS},
        threshold=0.3, seed=seed, sample_size=2_000,
    )  # fmt: skip
    return reference_from_mapping(document)


def reference_samples(seed: int = 7, rows: int = 20_000) -> dict[str, np.ndarray]:
    """The same reference's raw samples (for the KS anchor)."""
    rng = np.random.default_rng(seed)
    columns = {name: rng.normal(size=rows) for name in NAMES}
    document = synthetic_reference(columns, seed=seed, sample_size=2_000)
    features = document["reference"]["features"]
    return {name: np.asarray(features[name]["sample"]) for name in NAMES}


def make_processor(reference: Reference, partitions: int) -> DriftProcessor:
    settings = DriftSettings(window_ms=WINDOW_MS, source_partitions=partitions)
    return build_processor(settings, reference, partitions)


@dataclass
class Stream:
    values: np.ndarray  # (n, 20)
    channels: list[str]
    scores: np.ndarray | None
    change: int | None


class Driver:
    """Feeds records in micro-batches and the window reports back, like the runtime."""

    def __init__(self, processor: DriftProcessor, partitions: int) -> None:
        self.processor = processor
        self.state = State(processor.stores)
        for store in self.state.stores:
            for p in range(partitions):
                store.assign(p)
        self.windows_topic = processor.windows_topic
        self.alerts_topic = processor.alerts_topic
        self.window_offset = 0
        self.alerts: list[dict[str, Any]] = []

    def feed(self, records: list[Record]) -> None:
        pending = records
        while pending:
            result = self.processor.process(pending, self.state)
            self.state.commit()
            self.alerts.extend(o.value for o in result.outputs if o.topic == self.alerts_topic)
            reports = [o.value for o in result.outputs if o.topic == self.windows_topic]
            pending = []
            for report in reports:
                pending.append(Record(self.windows_topic, 0, self.window_offset, 0, None, report,
                                      (), "DriftWindowReport"))  # fmt: skip
                self.window_offset += 1


def run_service(
    stream: Stream, reference: Reference, partitions: int, step_ms: float, batch: int
) -> list[dict[str, Any]]:
    processor = make_processor(reference, partitions)
    driver = Driver(processor, partitions)
    offsets = [0] * partitions
    n = len(stream.values)
    rows = stream.values.tolist()
    chunk: list[Record] = []
    features_topic = processor.features_topic
    predictions_topic = processor.predictions_topic or "predictions"
    for i in range(n):
        p = i % partitions
        t = T0 + int(i * step_ms)
        if stream.scores is None:
            value = {"event_time": t, "names": NAMES, "values": rows[i],
                     "categories": {"channel": stream.channels[i]}}  # fmt: skip
            chunk.append(Record(features_topic, p, offsets[p], t, b"k", value, (),
                                "FeatureVector"))  # fmt: skip
        else:
            score = float(stream.scores[i])
            value = {"event_time": t, "model_name": "synthetic", "model_version": "1",
                     "score": score, "decision": score >= 0.3, "route": "primary"}  # fmt: skip
            chunk.append(Record(predictions_topic, p, offsets[p], t, b"k", value, (),
                                "Prediction"))  # fmt: skip
        offsets[p] += 1
        if len(chunk) >= batch:
            driver.feed(chunk)
            chunk = []
    if chunk:
        driver.feed(chunk)
    return [a for a in driver.alerts if a["state"] == "open"]


def opened_at(alert: dict[str, Any], step_ms: float) -> int:
    """Record index the episode opened on (event time i * step_ms)."""
    return math.ceil((int(alert["window_end"]) - T0) / step_ms)


def anchor_adwin(stream: Stream) -> list[tuple[str, int]]:
    hits = []
    for j, name in enumerate(NAMES):
        detector: Any = river_drift.ADWIN()
        for i, value in enumerate(stream.values[:, j].tolist()):
            detector.update(value)
            if detector.drift_detected:
                hits.append((name, i))
    return hits


def anchor_ks(stream: Stream, reference_samples: dict[str, np.ndarray], per_window: int):
    hits = []
    n = len(stream.values)
    for start in range(0, n - per_window + 1, per_window):
        window = stream.values[start : start + per_window]
        for j, name in enumerate(NAMES):
            p = scipy_stats.ks_2samp(window[:, j], reference_samples[name]).pvalue
            if p * FEATURES < 0.05:
                hits.append((name, start + per_window - 1))
    return hits


@dataclass(frozen=True)
class Scenario:
    name: str
    make: Callable[[np.random.Generator, int], Stream]
    feature: str
    per_window: int
    partitions: int
    horizon: int  # records after the change we wait for a detection
    anchors: bool = True


def _base(rng: np.random.Generator, n: int, change: int | None) -> Stream:
    values = rng.normal(size=(n, FEATURES))
    names = list(CHANNELS)
    probs = np.asarray(list(CHANNELS.values()))
    channels = [names[k] for k in rng.choice(len(names), size=n, p=probs)]
    return Stream(values, channels, None, change)


def mean_shift(sd: float) -> Callable[[np.random.Generator, int], Stream]:
    def make(rng: np.random.Generator, horizon: int) -> Stream:
        change = int(rng.integers(5_000, 15_000))
        stream = _base(rng, change + horizon, change)
        stream.values[change:, NAMES.index(DRIFTED)] += sd
        return stream

    return make


def variance_x2(rng: np.random.Generator, horizon: int) -> Stream:
    change = int(rng.integers(5_000, 15_000))
    stream = _base(rng, change + horizon, change)
    stream.values[change:, NAMES.index(DRIFTED)] *= math.sqrt(2.0)
    return stream


def gradual(rng: np.random.Generator, horizon: int) -> Stream:
    change = int(rng.integers(5_000, 15_000))
    stream = _base(rng, change + horizon, change)
    ramp = np.clip(np.arange(len(stream.values)) - change, 0, None) / 20_000
    stream.values[:, NAMES.index(DRIFTED)] += np.minimum(ramp, 1.0)
    return stream


def category_share(rng: np.random.Generator, horizon: int) -> Stream:
    change = int(rng.integers(5_000, 15_000))
    stream = _base(rng, change + horizon, change)
    sign = 1 if rng.random() < 0.5 else -1  # "pos" +-10 points, the rest in proportion
    shifted = {k: v * (0.5 - sign * 0.1) / 0.5 for k, v in CHANNELS.items() if k != "pos"}
    shifted["pos"] = 0.5 + sign * 0.1
    names = list(shifted)
    probs = np.asarray([shifted[k] for k in names])
    tail = rng.choice(len(names), size=horizon, p=probs / probs.sum())
    stream.channels[change:] = [names[k] for k in tail]
    return stream


def score_shift(rng: np.random.Generator, horizon: int) -> Stream:
    change = int(rng.integers(5_000, 15_000))
    n = change + horizon
    scores = rng.beta(1, 12, size=n)
    scores[change:] = rng.beta(1.5, 12, size=horizon)  # mean 0.077 -> 0.111
    return Stream(np.zeros((n, 0)), [], scores, change)


def scenarios(quick: bool) -> list[Scenario]:
    out = []
    traffic = [500, 1_000, 5_000, 60_000] if not quick else [1_000, 60_000]
    for per_window in traffic:
        for partitions in (1, 4):
            out.append(Scenario(f"shift_1sd/{per_window}/p{partitions}", mean_shift(1.0),
                                DRIFTED, per_window, partitions, 3_000))  # fmt: skip
    out += [
        Scenario("shift_0.5sd/1000/p1", mean_shift(0.5), DRIFTED, 1_000, 1, 6_000),
        Scenario("variance_x2/1000/p1", variance_x2, DRIFTED, 1_000, 1, 8_000),
        Scenario("gradual_1sd_20k/1000/p1", gradual, DRIFTED, 1_000, 1, 24_000),
        Scenario("category_10pt/1000/p1", category_share, "channel", 1_000, 1, 5_000, False),
        Scenario("category_10pt/1000/p4", category_share, "channel", 1_000, 4, 5_000, False),
        Scenario("category_10pt/5000/p1", category_share, "channel", 5_000, 1, 12_000, False),
        Scenario("score_only/1000/p1", score_shift, "score", 1_000, 1, 5_000, False),
    ]
    return out


def _quantile(values: list[int], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def run_scenario(scenario: Scenario, seeds: int, reference: Reference) -> dict[str, Any]:
    samples = reference_samples()
    step_ms = WINDOW_MS / scenario.per_window
    figures: dict[str, Any] = {}
    delays: dict[str, list[int]] = {"service": [], "adwin_raw": [], "ks_window": []}
    detected = dict.fromkeys(delays, 0)
    false_before = dict.fromkeys(delays, 0)
    wrong = dict.fromkeys(delays, 0)
    episodes_per_run: list[int] = []
    for seed in range(seeds):
        rng = np.random.default_rng(10_000 + seed)
        stream = scenario.make(rng, scenario.horizon)
        change = stream.change
        assert change is not None
        opened = run_service(stream, reference, scenario.partitions, step_ms, batch=500)
        hits = {"service": [(a["feature"], opened_at(a, step_ms)) for a in opened]}
        if scenario.anchors:
            hits["adwin_raw"] = anchor_adwin(stream)
            hits["ks_window"] = anchor_ks(stream, samples, scenario.per_window)
        episodes_per_run.append(sum(1 for _, at in hits["service"] if at >= change))
        for who, found in hits.items():
            first = None
            for feature, at in sorted(found, key=lambda h: h[1]):
                if at < change:
                    false_before[who] += 1
                elif feature not in (scenario.feature, "decision") and first is None:
                    wrong[who] += 1
                elif first is None and feature in (scenario.feature, "decision"):
                    first = at - change
            if first is not None:
                detected[who] += 1
                delays[who].append(first)
    for who in delays if scenario.anchors else ["service"]:
        figures[who] = {
            "detected": f"{detected[who]}/{seeds}",
            "median_delay": _quantile(delays[who], 0.5),
            "p90_delay": _quantile(delays[who], 0.9),
            "within_2000": sum(1 for d in delays[who] if d <= 2_000),
            "wrong_feature_episodes": wrong[who],
            "false_episodes_before_change": false_before[who],
        }
    figures["service"]["max_episodes_after_change"] = max(episodes_per_run)
    return figures


def stationary(records: int, per_window: int, partitions: int, reference: Reference, seed: int):
    rng = np.random.default_rng(seed)
    stream = _base(rng, records, None)
    step_ms = WINDOW_MS / per_window
    opened = run_service(stream, reference, partitions, step_ms, batch=1_000)
    monitored = FEATURES + 1  # 20 features + the categorical attribute
    adwin = anchor_adwin(stream)
    return {
        "records": records,
        "episodes": len(opened),
        "features": sorted({a["feature"] for a in opened}),
        "false_per_1M_per_feature": len(opened) / (records / 1e6) / monitored,
        "adwin_raw_false_per_1M_per_feature": len(adwin) / (records / 1e6) / FEATURES,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--stationary-records", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="fewer scenarios and seeds")
    parser.add_argument("--only", default="", help="run scenarios whose name contains this")
    args = parser.parse_args()
    seeds = 3 if args.quick else args.seeds
    reference = make_reference()
    started = time.perf_counter()
    results: dict[str, Any] = {"seeds": seeds}
    for scenario in scenarios(args.quick):
        if args.only and args.only not in scenario.name:
            continue
        t = time.perf_counter()
        results[scenario.name] = run_scenario(scenario, seeds, reference)
        print(scenario.name, json.dumps(results[scenario.name]),
              f"({time.perf_counter() - t:.0f} s)", flush=True)  # fmt: skip
    if not args.only or "stationary" in args.only:
        records = 100_000 if args.quick else args.stationary_records
        for per_window, partitions in STATIONARY:
            name = f"stationary/{per_window}/p{partitions}"
            if args.only and args.only not in name:
                continue
            t = time.perf_counter()
            results[name] = stationary(records, per_window, partitions, reference, seed=99)
            print(name, json.dumps(results[name]), f"({time.perf_counter() - t:.0f} s)",
                  flush=True)  # fmt: skip
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
