"""The soak benchmark, short: five minutes of the whole pipeline at 1,000 events/s with a
broker restart and a rolling restart of the four services, then every output checked
exactly once. Runs ``python -m benchmarks.soak`` as ``make soak`` does (its own broker),
and checks what its JSON line and report say, not how fast anything was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.serial]

SERVICES = ("features", "scorer", "drift", "performance")


@pytest.mark.timeout(1800)
def test_five_minute_soak_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "soak"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--minutes", "5", "--out", str(run_dir)],
        capture_output=True, text=True, timeout=1700, check=False,
    )  # fmt: skip
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    figures = json.loads(result.stdout.strip().splitlines()[-1])

    # Every output exactly once, through a broker restart and a restart of each service.
    sent = figures["sent"]
    assert sent["valid"] == 5 * 60 * 1000 and sent["delivery_errors"] == 0, figures
    assert sent["duplicates"] > 0 and sent["malformed"] > 0 and sent["labels"] > 0
    assert figures["lost"] == 0 and figures["duplicated"] == 0, figures
    assert all(figures["exactly_once"].values()), figures["exactly_once"]
    assert figures["dead_letters"]["events.dlq"] == sent["malformed"]
    # The label delays are shortened with the horizon, so about as few labels miss it as in
    # production (2 %; 32 % before the scaling); the audit read after the traffic.
    assert figures["dead_letters"]["labels.dlq"] < 0.05 * sent["labels"], figures
    assert figures["audit_s"] > 0
    assert [r["what"] for r in figures["restarts"]] == ["broker", *SERVICES]
    assert figures["unplanned_exits"] == []

    # The figures the hour-long run is judged on are all there.
    for name in (*SERVICES, "broker"):
        assert figures["rss_mib_growth_pct_per_h"][name]["last"] > 0
    stores = figures["state_growth_pct_per_h"]
    for store in ("features/dedup", "features/entities", "performance/join"):
        assert stores[store]["last"] > 0, stores
    assert any(name.endswith("-changelog") for name in figures["changelog_growth_pct_per_h"])
    groups = {(r["restart"], r["group"]) for r in figures["recovery"]}
    expected = {("broker", g) for g in (*SERVICES, "pipeline")}
    expected |= {(g, g) for g in SERVICES} | {(g, "pipeline") for g in SERVICES}
    assert groups == expected
    # Each stateful service restored its state from its changelogs at its own restart, and
    # the changelogs got the run's compressed wall-clock settings.
    restores = figures["restores"]
    for name in ("features", "performance"):
        assert restores[name] and restores[name][-1]["records"] > 0, restores
    assert set(figures["changelog_config"]) == {
        "segment.ms",
        "segment.jitter.ms",
        "delete.retention.ms",
    }
    # The broker's log cleaner ran (60-s segments) and its passes were read from its log,
    # each interval's share beside that interval's p99.
    cleaner = figures["log_cleaner"]
    assert cleaner["passes"] > 0 and cleaner["last"]["seconds_per_min"] > 0, cleaner
    latency = figures["latency"]
    assert latency["p99_first_s"] is not None and latency["p99_last_s"] is not None
    assert figures["load1"]["max"] > 0
    # Where the CPU went in each p99 window: every process (this one too) used some, and
    # the machine's split from /proc/stat adds up to about its cores.
    for window in ("first", "last"):
        cpu = figures["cpu"][window]
        assert set(cpu["cores"]) == {*SERVICES, "broker", "soak"}, cpu
        assert all(v > 0 for v in cpu["cores"].values()), cpu
        split = sum(cpu["host"][k] for k in ("user", "system", "iowait", "steal", "idle"))
        assert split == pytest.approx(os.cpu_count() or 1, rel=0.25), cpu

    samples = json.loads((run_dir / "samples.json").read_text())
    assert len(samples) >= 25  # every 10 s over five minutes and the drain
    html = Path(figures["report"]).read_text()
    assert html.count("<svg") >= 5 and "broker restart" in html and "retention full" in html
