"""The broker's log-cleaner passes, read from its ``server.log``, per interval of a soak.

A compacted changelog is cleaned by the broker's one cleaner thread, which recopies the
whole log on each pass; a pass is logged when it ends::

    [2026-12-06 05:45:42,970] INFO [kafka-log-cleaner-thread-0]:
    \tLog cleaner thread 0 cleaned log soak.performance-join-changelog-0 (dirty section = ...)
    \t1.9 MB of log processed in 0.2 seconds (9.8 MB/sec).

The soak puts the seconds the cleaner ran in each 10-s interval beside that interval's p99
(docs/decisions/changelog-segment-jitter.md: bursts of cleaning were the p99's tail).

``python -m benchmarks.brokerlog RUN_DIR`` prints those figures for a finished soak run
(``--started 'YYYY-MM-DD HH:MM:SS'``, the producer's start in the broker's local time, for
a run whose samples carry no wall-clock time).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

_HEADER = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] INFO \[kafka-log-cleaner-thread-"
)
_CLEANED = re.compile(r"cleaned log (\S+) \(dirty section")
_PROCESSED = re.compile(r"([\d.]+) MB of log processed in ([\d.]+) seconds")


@dataclass(frozen=True)
class CleanerPass:
    ended: float  # epoch seconds (the broker's local time), when the pass was logged
    log: str  # topic-partition
    mb: float  # MB of log read and recopied
    seconds: float


def cleaner_passes(lines: Iterable[str]) -> list[CleanerPass]:
    """Every completed cleaner pass in the broker's log lines, in order."""
    passes: list[CleanerPass] = []
    ended: float | None = None
    log: str | None = None
    for line in lines:
        header = _HEADER.match(line)
        if header:
            stamp = datetime.strptime(header.group(1), "%Y-%m-%d %H:%M:%S,%f")
            ended, log = stamp.timestamp(), None
            continue
        if ended is None:
            continue
        cleaned = _CLEANED.search(line)
        if cleaned:
            log = cleaned.group(1)
            continue
        processed = _PROCESSED.search(line)
        if processed and log is not None:
            passes.append(
                CleanerPass(ended, log, float(processed.group(1)), float(processed.group(2)))
            )
            ended = log = None
    return passes


def seconds_per_interval(
    passes: Sequence[CleanerPass], ends: Sequence[float], interval_s: float
) -> list[float]:
    """The seconds the cleaner ran within each interval ``(end - interval_s, end]`` (epoch
    seconds); a pass spanning intervals is split between them."""
    out = [0.0] * len(ends)
    for p in passes:
        start = p.ended - p.seconds
        for i, end in enumerate(ends):
            overlap = min(p.ended, end) - max(start, end - interval_s)
            if overlap > 0:
                out[i] += overlap
    return out


def window_figures(cleaning: Sequence[float], interval_s: float) -> dict[str, Any] | None:
    """The cleaner in a window of intervals: seconds per minute, and the longest any one
    interval held (a burst)."""
    if not cleaning:
        return None
    minutes = len(cleaning) * interval_s / 60
    return {
        "seconds_per_min": round(sum(cleaning) / minutes, 2),
        "max_in_interval_s": round(max(cleaning), 2),
        "intervals_over_2s": sum(c > 2.0 for c in cleaning),
    }


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.brokerlog", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a soak's --out directory")
    parser.add_argument(
        "--started", help="the producer's start, 'YYYY-MM-DD HH:MM:SS' (broker local time)"
    )
    parser.add_argument("--interval", type=float, default=10.0, help="the soak's --sample-s")
    args = parser.parse_args(argv)
    samples = json.loads((args.run_dir / "samples.json").read_text())
    if args.started:
        origin = datetime.strptime(args.started, "%Y-%m-%d %H:%M:%S").timestamp()
        ends = [origin + s["t"] for s in samples]
    elif samples and samples[0].get("wall") is not None:
        ends = [s["wall"] for s in samples]
    else:
        parser.error("these samples carry no wall-clock time; give --started")
    with (args.run_dir / "kafka" / "server.log").open(errors="replace") as lines:
        passes = cleaner_passes(lines)
    cleaning = seconds_per_interval(passes, ends, args.interval)
    run_s = samples[-1]["t"]
    window, warmup = min(600.0, run_s / 4), min(120.0, run_s / 10)

    def figures(a: float, b: float) -> dict[str, Any]:
        picked = [(s, c) for s, c in zip(samples, cleaning, strict=True) if a <= s["t"] <= b]
        slow = [c for s, c in picked if (s.get("p99_s") or 0) > 0.6]
        return {
            **(window_figures([c for _, c in picked], args.interval) or {}),
            "intervals": len(picked),
            "p99_over_0.6s": len(slow),
            "of_which_cleaner_over_2s": sum(c > 2.0 for c in slow),
        }

    print(json.dumps({
        "passes": len(passes),
        "first": figures(warmup, warmup + window),
        "last": figures(run_s - window, run_s),  # the windows of the soak's p99s
    }))  # fmt: skip


if __name__ == "__main__":
    _main(sys.argv[1:])
