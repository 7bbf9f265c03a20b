"""The drift operator commands: one-line errors, reference description."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from services.drift.cli import app
from services.drift.reference import synthetic_reference

runner = CliRunner()


def test_describe_reference_summarises_what_is_monitored(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    document = synthetic_reference(
        {"amount": rng.lognormal(size=2_000)}, score=rng.beta(1, 9, size=2_000),
        categories={"channel": {"pos": 0.6, "atm": 0.4}}, threshold=0.5,
    )  # fmt: skip
    document["input_names"] = ["amount", "hour"]
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(document))
    result = runner.invoke(app, ["describe-reference", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert set(summary["numeric"]) == {"amount", "score"}
    assert summary["categorical"] == {"channel": ["__other__", "atm", "pos"]}
    assert summary["unmonitored_inputs"] == ["hour"]


def test_bad_reference_is_one_line_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["describe-reference", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: drift reference")
    assert len(result.output.strip().splitlines()) == 1
