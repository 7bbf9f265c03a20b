"""Prometheus configuration, alert rules and the Grafana dashboard: valid, and every metric
they read is defined in libs/ or services/."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.unit.deploy.support import MONITORING, defined_metrics, metrics_in

ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "streamml.json"


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_code_defines_the_metrics_the_checks_rely_on() -> None:
    # Guards the scanner itself: if it found nothing, every later check would pass.
    names = defined_metrics()
    for name in ("streamml_records_in_total", "streamml_consumer_lag",
                 "streamml_batch_processing_seconds_bucket", "streamml_drift_statistic",
                 "streamml_performance_quality", "streamml_scorer_predictions_total"):  # fmt: skip
        assert name in names
    assert "streamml_no_such_metric" not in names


def test_alert_rules_cover_the_operational_signals() -> None:
    names = {rule["alert"] for rule in _rules()}
    assert {"StreamMLDriftAlertOpen", "StreamMLModelQualitySLOBreach",
            "StreamMLDeadLetterRateHigh", "StreamMLConsumerLagHigh", "StreamMLFailStopTripped",
            "StreamMLFallbackShareHigh", "StreamMLLabelsStalled"} <= names  # fmt: skip
    for rule in _rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_metric_of_an_alert_rule_exists_in_the_code() -> None:
    known = defined_metrics()
    for rule in _rules():
        used = metrics_in(rule["expr"])
        assert used or rule["alert"] == "StreamMLServiceDown", rule["alert"]
        assert used <= known, f"{rule['alert']}: unknown {sorted(used - known)}"


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_prometheus_scrapes_every_service_and_loads_the_rules() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {f"{name}:8000" for name in ("features", "scorer", "drift", "performance")}


def test_dashboard_is_valid_and_reads_only_defined_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "streamml"
    panels = dashboard["panels"]
    known = defined_metrics()
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("throughput", "lag", "dead letters", "drift", "auc", "route mix"):
        assert topic in titles, topic
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = metrics_in(target["expr"])
            assert used, f"{panel['title']}: no streamml metric in {target['expr']}"
            assert used <= known, f"{panel['title']}: unknown {sorted(used - known)}"
            assert target["datasource"]["uid"] == "prometheus"


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    provisioning = MONITORING / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards" / "streamml.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
