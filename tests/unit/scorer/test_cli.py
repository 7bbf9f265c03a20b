"""Operator commands and start-up refusals, without a broker."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.scorer.__main__ import main
from services.scorer.artifact import MODEL_FILE, load_private_key
from services.scorer.cli import app
from tests.unit.scorer import modelkit

runner = CliRunner()


def test_keygen_then_verify_and_refusals(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = runner.invoke(app, ["keygen", "--out", str(keys)])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["keygen", "--out", str(keys)])
    assert again.exit_code == 2 and "already exists" in again.output

    models = tmp_path / "models"
    path = modelkit.publish(
        models, load_private_key(keys / "signing.key"), "m", "1", modelkit.logistic_model([1] * 4)
    )
    ok = runner.invoke(app, ["verify", str(path), "--public-key", str(keys / "signing.pub")])
    assert ok.exit_code == 0 and ok.output.startswith("OK m/1"), ok.output
    (path / MODEL_FILE).write_bytes((path / MODEL_FILE).read_bytes()[:-1])
    bad = runner.invoke(app, ["verify", str(path), "--public-key", str(keys / "signing.pub")])
    assert bad.exit_code == 1 and "digest_mismatch" in bad.output
    nokey = runner.invoke(app, ["verify", str(path), "--public-key", str(tmp_path / "nope")])
    assert nokey.exit_code == 2 and nokey.output.startswith("error: ")


def test_train_without_a_key_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--key", str(tmp_path / "missing.key")])
    assert result.exit_code == 2
    assert "keygen" in result.output


def test_promote_rejects_an_unknown_role() -> None:
    result = runner.invoke(app, ["promote", "--model", "m", "--version", "1", "--role", "boss"])
    assert result.exit_code == 2 and "--role" in result.output


def test_scorer_refuses_to_start_without_a_valid_model(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    keys,
) -> None:
    models = tmp_path / "models"
    path = modelkit.publish(models, keys[0], "fraud-gbt", "1", modelkit.logistic_model([1] * 4))
    (path / "digest.sha256.sig").unlink()  # unsigned
    monkeypatch.setenv("STREAMML_SCORER_MODEL_DIR", str(models))
    monkeypatch.setenv("STREAMML_SCORER_PUBLIC_KEY_PATH", str(keys[1]))
    monkeypatch.setenv("STREAMML_SCORER_FOLLOW_CONTROL", "false")
    monkeypatch.setenv("STREAMML_SCORER_FALLBACK_MODEL", "")
    monkeypatch.setattr("streamml.service.configure_logging", lambda *a, **k: None)
    with caplog.at_level(logging.INFO):
        assert main() == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("unsigned" in m and "fraud-gbt/1" in m for m in messages)
    # The refusal is the one start-up error line of every service (streamml.service).
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("error: no valid primary model") for line in lines), lines


def test_bad_setting_is_one_line_exit_2(monkeypatch, capsys) -> None:
    monkeypatch.setenv("STREAMML_SCORER_LATENCY_BUDGET_MS", "-1")
    assert main() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "STREAMML_SCORER_LATENCY_BUDGET_MS" in err
