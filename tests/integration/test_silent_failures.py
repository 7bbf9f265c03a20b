"""The silent-failure suite's quick mode on the session broker: the real pipeline per
scenario (``benchmarks/silent_failures.py --quick``: the control run and two injected
failures, one seed). Claims: each injected failure raises an alert after its injection
point, the signal that should catch it is among those that fired, and the control run
raises no alert at all. Times are reported by the benchmark, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_suite_detects_the_failures_and_the_control_stays_quiet(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.silent_failures", "--quick",
         "--bootstrap", kafka_bootstrap, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False, cwd=ROOT,
    )  # fmt: skip
    output = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    runs = {run["scenario"]: run for run in figures["runs"]}
    assert set(runs) == {"control", "stale-partition", "duplicate-storm"}, output
    assert all(run["exit_code"] == 0 for run in runs.values()), output

    control = figures["scenarios"]["control"]
    assert control["errors"] == [] and figures["control_false_alarms"] == 0, output
    for name, signal in (("stale-partition", "freshness"), ("duplicate-storm", "duplicates")):
        scenario = figures["scenarios"][name]
        assert scenario["detected"] == 1, f"{name}: {scenario}"
        summary = json.loads((tmp_path / f"{name}-seed1" / "summary.json").read_text())
        fired = summary["figures"]["scenario"]["signals_after"]
        assert signal in fired, f"{name}: {fired}"
        assert summary["figures"]["scenario"]["false_alarms"] == 0, f"{name}: {summary}"
    assert figures["detection_rate"] == 1.0
    html = (tmp_path / "stale-partition-seed1" / "report.html").read_text()
    assert "Scenario stale-partition" in html and "injection" in html
