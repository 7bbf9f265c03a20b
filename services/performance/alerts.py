"""SLO and canary alerts, decided from the sliding-window reports of one report boundary.

An SLO alert opens when a metric stays on the wrong side of its threshold for K reports in a
row (a window without enough labels is not judged and does not break the run), and resolves
at the first report where it is back. A canary is flagged the same way when, for K reports
in a row, its metric is worse than the primary route's of the same model name by more than a
margin. The state is a small JSON-serializable dict, so it is committed with the offsets and
replays give the same alerts.

>>> monitor = SloMonitor(slo_min={"roc_auc": 0.7}, slo_max={}, consecutive=2, min_labeled=1,
...                      canary_metrics=[], canary_margin=0.0)
>>> report = {"model_name": "m", "model_version": "1", "route": "primary", "labeled": 5,
...           "roc_auc": 0.5, "window_start": 0, "window_end": 10}
>>> state: dict[str, list[object]] = {}
>>> monitor.evaluate([report], state)
[]
>>> [a["state"] for a in monitor.evaluate([dict(report, window_end=20)], state)]
['open']
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from services.performance.settings import LOWER_IS_BETTER

AlertState = dict[str, list[Any]]  # key -> [consecutive breaches, open alert id or ""]


class SloMonitor:
    """Turns reports into SloAlert values; keeps its memory in a caller-owned dict."""

    def __init__(
        self,
        *,
        slo_min: Mapping[str, float],
        slo_max: Mapping[str, float],
        consecutive: int,
        min_labeled: int,
        canary_metrics: Sequence[str],
        canary_margin: float,
        estimate_min: Mapping[str, float] | None = None,
    ) -> None:
        self._slo_min = dict(slo_min)
        self._slo_max = dict(slo_max)
        self._consecutive = consecutive
        self._min_labeled = min_labeled
        self._canary_metrics = list(canary_metrics)
        self._canary_margin = canary_margin
        # Floors on the estimates before labels (kind "estimate"): judged only on windows
        # whose estimate_status is "calibrated", whatever their labels.
        self._estimate_min = dict(estimate_min or {})

    def evaluate(
        self, reports: Sequence[Mapping[str, Any]], state: AlertState
    ) -> list[dict[str, Any]]:
        """Alerts (open/resolved) for one boundary's model-level sliding reports."""
        alerts: list[dict[str, Any]] = []
        by_route: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for report in reports:
            by_route.setdefault((report["model_name"], report["route"]), []).append(report)
            for metric, threshold in sorted(self._slo_min.items()):
                self._judge(report, metric=metric, threshold=threshold, comparison="min",
                            baseline=None, state=state, alerts=alerts)  # fmt: skip
            for metric, threshold in sorted(self._slo_max.items()):
                self._judge(report, metric=metric, threshold=threshold, comparison="max",
                            baseline=None, state=state, alerts=alerts)  # fmt: skip
            for metric, threshold in sorted(self._estimate_min.items()):
                self._judge(report, metric=metric, threshold=threshold, comparison="min",
                            baseline=None, state=state, alerts=alerts,
                            kind="estimate")  # fmt: skip
        for report in reports:
            if report["route"] != "canary":
                continue
            primaries = by_route.get((report["model_name"], "primary"), [])
            # The primary with the most labels in the window is the baseline.
            baseline = max(
                primaries, key=lambda r: (r["labeled"], r["model_version"]), default=None
            )
            for metric in self._canary_metrics:
                self._judge(report, metric=metric, threshold=self._canary_margin,
                            comparison="canary", baseline=baseline, state=state,
                            alerts=alerts)  # fmt: skip
        return alerts

    def _judge(
        self,
        report: Mapping[str, Any],
        *,
        metric: str,
        threshold: float,
        comparison: str,
        baseline: Mapping[str, Any] | None,
        state: AlertState,
        alerts: list[dict[str, Any]],
        kind: str | None = None,
    ) -> None:
        kind = kind or ("canary" if comparison == "canary" else "slo")
        key = "|".join(
            (kind, report["model_name"], report["model_version"], report["route"], metric)
        )
        value: float | None = report.get(metric)
        base_value: float | None = None
        if comparison == "canary" and baseline is not None:
            if baseline["labeled"] >= self._min_labeled:
                base_value = baseline.get(metric)
            if base_value is None:
                return  # no baseline to compare with: keep the run as it is
        if kind == "estimate":
            if value is None or report.get("estimate_status") != "calibrated":
                return  # not calibrated or too few predictions: keep the run as it is
        elif value is None or report["labeled"] < self._min_labeled:
            return  # too few labels to say anything: keep the run as it is
        if comparison == "min":
            breached = value < threshold
        elif comparison == "max":
            breached = value > threshold
        elif base_value is None:
            return
        else:
            worse_by = (value - base_value) if metric in LOWER_IS_BETTER else (base_value - value)
            breached = worse_by > threshold
        run, open_id = state.get(key, [0, ""])
        if breached:
            run += 1
            if run >= self._consecutive and not open_id:
                open_id = _alert_id(key, report["window_end"])
                alerts.append(
                    _alert(open_id, kind=kind, state="open", report=report, metric=metric,
                           value=value, threshold=threshold, comparison=comparison, run=run,
                           baseline=baseline, base_value=base_value)
                )  # fmt: skip
        else:
            run = 0
            if open_id:
                alerts.append(
                    _alert(open_id, kind=kind, state="resolved", report=report, metric=metric,
                           value=value, threshold=threshold, comparison=comparison, run=run,
                           baseline=baseline, base_value=base_value)
                )  # fmt: skip
                open_id = ""
        if run or open_id:
            state[key] = [run, open_id]
        else:
            state.pop(key, None)


def _alert_id(key: str, window_end: int) -> str:
    return hashlib.blake2b(f"{key}|{window_end}".encode(), digest_size=12).hexdigest()


def _alert(
    alert_id: str,
    *,
    kind: str,
    state: str,
    report: Mapping[str, Any],
    metric: str,
    value: float,
    threshold: float,
    comparison: str,
    run: int,
    baseline: Mapping[str, Any] | None,
    base_value: float | None,
) -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "kind": kind,
        "state": state,
        "model_name": report["model_name"],
        "model_version": report["model_version"],
        "route": report["route"],
        "metric": metric,
        "value": float(value),
        "threshold": float(threshold),
        "comparison": comparison,
        "consecutive_windows": run,
        "labeled": int(report["labeled"]),
        "window_start": int(report["window_start"]),
        "window_end": int(report["window_end"]),
        "baseline_model_version": None if baseline is None else baseline["model_version"],
        "baseline_value": None if base_value is None else float(base_value),
        "predictions": int(report.get("estimated_predictions") or 0) if kind == "estimate" else 0,
    }
