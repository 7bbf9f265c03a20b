"""SLO alerts open after K breaching windows and resolve on recovery; canaries are compared."""

from __future__ import annotations

from typing import Any

from services.performance.alerts import SloMonitor


def _report(
    route: str, version: str, end: int, labeled: int = 100, **metrics: Any
) -> dict[str, Any]:
    return {"model_name": "fraud", "model_version": version, "route": route,
            "labeled": labeled, "window_start": 0, "window_end": end, **metrics}  # fmt: skip


def _monitor(**overrides: Any) -> SloMonitor:
    values: dict[str, Any] = {"slo_min": {"roc_auc": 0.8}, "slo_max": {"ece": 0.1},
                              "consecutive": 3, "min_labeled": 50,
                              "canary_metrics": ["roc_auc"], "canary_margin": 0.05}  # fmt: skip
    values.update(overrides)
    return SloMonitor(**values)


def test_slo_opens_after_k_windows_and_resolves_once() -> None:
    monitor, state = _monitor(), {}
    seen = []
    aucs = [0.7, 0.7, 0.9, 0.7, 0.7, 0.7, 0.7, 0.85, 0.85]
    for i, auc in enumerate(aucs):
        seen += monitor.evaluate([_report("primary", "1", i, roc_auc=auc, ece=0.0)], state)
    assert [(a["state"], a["window_end"], a["metric"]) for a in seen] == [
        ("open", 5, "roc_auc"),
        ("resolved", 7, "roc_auc"),
    ]
    assert seen[0]["alert_id"] == seen[1]["alert_id"]
    assert seen[0]["consecutive_windows"] == 3 and seen[0]["comparison"] == "min"
    assert state == {}


def test_windows_with_too_few_labels_are_not_judged() -> None:
    monitor, state = _monitor(consecutive=2), {}
    alerts = []
    for i, labeled in enumerate([100, 10, 100]):
        alerts += monitor.evaluate([_report("primary", "1", i, labeled, roc_auc=0.5)], state)
    assert [a["window_end"] for a in alerts] == [2]


def test_upper_bound_metrics() -> None:
    monitor, state = _monitor(consecutive=1), {}
    alerts = monitor.evaluate([_report("primary", "1", 0, roc_auc=0.9, ece=0.3)], state)
    assert [(a["metric"], a["comparison"]) for a in alerts] == [("ece", "max")]


def test_canary_worse_than_primary_is_flagged() -> None:
    monitor, state = _monitor(consecutive=2, slo_min={}, slo_max={}), {}
    alerts = []
    for i in range(3):
        reports = [_report("primary", "1", i, roc_auc=0.9), _report("canary", "2", i, roc_auc=0.8)]
        alerts += monitor.evaluate(reports, state)
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert["kind"], alert["route"], alert["model_version"]) == ("canary", "canary", "2")
    assert (alert["baseline_model_version"], alert["baseline_value"]) == ("1", 0.9)
    # Within the margin: resolved.
    reports = [_report("primary", "1", 9, roc_auc=0.9), _report("canary", "2", 9, roc_auc=0.88)]
    assert [a["state"] for a in monitor.evaluate(reports, state)] == ["resolved"]
