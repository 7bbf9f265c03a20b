"""The demo pipeline end to end, headless, on the session broker: the summary's claims
(drift detected, no loss, no duplicates, dead letters, quality drop) hold and the report is
written. Runs ``streamml demo run`` as a user would, so the CLI, the four service processes
and the clean shutdown are all exercised."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DURATION_S = 40


def test_demo_run_headless_holds_every_claim(kafka_bootstrap: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "streamml.cli", "demo", "run", "--headless",
         "--duration", str(DURATION_S), "--drift-at", "0.35",
         "--bootstrap", kafka_bootstrap, "--dir", str(run_dir)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = " ".join((result.stdout + result.stderr).split())
    summary_path = run_dir / "summary.json"
    assert summary_path.exists(), output[-3000:]
    summary = json.loads(summary_path.read_text())
    claims = {claim["name"]: claim for claim in summary["claims"]}
    for name in ("no event lost", "no event duplicated", "malformed records dead-lettered",
                 "injected drift detected", "quality drop seen", "report written"):  # fmt: skip
        assert claims[name]["ok"], f"{name}: {claims[name]['detail']}\n{output[-3000:]}"
    assert result.returncode == 0, output[-3000:]

    figures = summary["figures"]
    sent = figures["producer"]
    assert sent["valid"] == DURATION_S * 200
    assert sent["duplicates"] > 0 and sent["undecodable"] + sent["invalid"] > 0
    assert figures["features"]["records"] == sent["valid"]
    assert figures["predictions"]["distinct_event_ids"] == sent["valid"]
    assert figures["dead_letters"]["events.dlq"] == sent["undecodable"] + sent["invalid"]
    assert figures["drift_detection"]["records_after_change"] > 0

    html = (run_dir / "report.html").read_text()
    assert html.count("<svg") >= 2 and "drift injected" in html
    # Every service stopped cleanly on SIGTERM.
    assert "features exit 0, scorer exit 0, drift exit 0, performance exit 0" in output
    for name in ("features", "scorer", "drift", "performance"):
        assert (run_dir / "logs" / f"{name}.log").stat().st_size > 0
