"""Settings (durations, one-line errors, exit code 2) and the Prometheus gauges."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.performance.metrics import PerformanceMetrics
from services.performance.settings import PerformanceSettings
from streamml.errors import ConfigError
from streamml.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7200", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("90m", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("P1D", timedelta(days=1)),
    ],
)
def test_durations_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: timedelta
) -> None:
    monkeypatch.setenv("STREAMML_PERFORMANCE_LABEL_HORIZON", text)
    assert load_settings(PerformanceSettings).label_horizon == expected


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("SLO_MIN", '{"log_loss": 0.3}', "SLO_MIN"),
        ("REPORT_INTERVAL", "0", "REPORT_INTERVAL"),
        ("LABEL_HORIZON", "soon", "LABEL_HORIZON"),
        ("WINDOW_KIND", "tumbling", "WINDOW_KIND"),
    ],
)
def test_bad_settings_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(f"STREAMML_PERFORMANCE_{name}", value)
    with pytest.raises(ConfigError) as info:
        load_settings(PerformanceSettings)
    message = str(info.value)
    assert "\n" not in message and f"STREAMML_PERFORMANCE_{needle}" in message


def test_main_exits_2_on_a_bad_setting() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.performance"],
        check=False,
        env={"STREAMML_PERFORMANCE_SLO_MAX": '{"roc_auc": 1}', "PATH": ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: invalid setting STREAMML_PERFORMANCE_SLO_MAX")
    assert "Traceback" not in done.stderr


def _report(version: str, end: int, auc: float | None) -> dict[str, object]:
    return {"model_name": "fraud", "model_version": version, "route": "primary",
            "window": "sliding", "segment_field": None, "segment_value": None,
            "window_end": end, "roc_auc": auc, "labeled": 5, "predictions": 9}  # fmt: skip


def test_gauges_follow_reports_and_forget_what_is_no_longer_reported() -> None:
    registry = CollectorRegistry()
    metrics = PerformanceMetrics(registry)
    labels = {"model": "fraud", "route": "primary", "window": "sliding", "segment_field": "",
              "segment_value": "", "metric": "roc_auc"}  # fmt: skip
    metrics.observe(_report("1", 1000, 0.8))
    metrics.observe(_report("2", 1000, None))
    value = registry.get_sample_value("streamml_performance_quality", {**labels, "version": "1"})
    assert value == 0.8
    assert registry.get_sample_value("streamml_performance_report_boundary_seconds") == 1.0
    # Version 1 is retired: the boundary after next no longer carries it.
    metrics.observe(_report("2", 2000, 0.7))
    metrics.observe(_report("2", 3000, 0.7))
    assert (
        registry.get_sample_value("streamml_performance_quality", {**labels, "version": "1"})
        is None
    )
    assert (
        registry.get_sample_value("streamml_performance_quality", {**labels, "version": "2"}) == 0.7
    )
    metrics.on_event("orphan_label")
    assert (
        registry.get_sample_value(
            "streamml_performance_join_events_total", {"kind": "orphan_label"}
        )
        == 1.0
    )


def test_stream_event_time_gauge_shows_what_holds_the_watermark() -> None:
    registry = CollectorRegistry()
    metrics = PerformanceMetrics(registry)
    metrics.on_watermark(3, "labels", 2_000)
    assert (
        registry.get_sample_value(
            "streamml_performance_stream_event_time_seconds", {"topic": "labels", "partition": "3"}
        )
        == 2.0
    )


def test_cli_describe_and_its_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from services.performance.cli import app

    runner = CliRunner()
    monkeypatch.setenv("STREAMML_KAFKA_TOPIC_PREFIX", "prod.")
    shown = runner.invoke(app, ["describe"])
    assert shown.exit_code == 0
    assert json.loads(shown.stdout)["watermark_streams"] == {
        "prod.predictions": "required",
        "prod.predictions.shadow": "optional",
        "prod.labels": "required",
    }
    monkeypatch.setenv("STREAMML_PERFORMANCE_WINDOW_SIZE", "3")
    failed = runner.invoke(app, ["describe"])
    assert failed.exit_code == 2
    assert failed.stderr.strip().startswith(
        "error: invalid setting STREAMML_PERFORMANCE_WINDOW_SIZE"
    )
