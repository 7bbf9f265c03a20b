"""The summary's claims, checked from what the producer sent and what the topics hold.

Pure: every input is plain data, so the checks are unit-tested without a broker.

* **no loss**: every valid event id sent is in ``features`` and in ``predictions``;
* **no duplicates**: each event id appears once in ``features`` and once in
  ``predictions``, although a few percent of events were sent twice;
* **dead letters**: every malformed record sent is in ``events.dlq``, nothing else is;
* **drift detected**: an alert-severity drift episode on a feature the drift changes,
  raised by a window of drifted records only (with how many drifted records had been sent
  by the end of that window);
* **quality drop seen**: the performance service's live AUC after the drift is clearly
  below the AUC before it (or below the model's validation AUC when the run is too short
  for a report before the drift), or an SLO alert opened after the drift.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

DRIFTED_FEATURES = frozenset(
    {"amount_log1p", "amount_clipped", "amount_bucket", "amount_to_running_mean", "country",
     "currency", "score", "decision"}
)  # fmt: skip
"""What :class:`streamml.synthetic.Drift` changes by construction (besides the per-card amount
windows and the one-hot countries): amounts, countries, and so the model's score."""


def changed_by_drift(feature: str) -> bool:
    """Whether the injected drift changes ``feature``'s distribution. Counts and gaps
    (``*_count``, ``history_count_log1p``, ``seconds_since_previous_log1p``) and the clock
    do not change: an alert on them is not a detection of the injected drift."""
    if feature in DRIFTED_FEATURES or feature.startswith("country#"):
        return True
    return feature.startswith("amount_") and not feature.endswith("_count")


QUALITY_DROP = 0.05
"""AUC points the live AUC must fall below its pre-drift level to count as a drop."""


@dataclass(frozen=True)
class Claim:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Sent:
    """What the producer sent."""

    valid_ids: frozenset[str]
    duplicates: int
    malformed: int
    labels: int
    drift_event_time_ms: int | None
    drift_wall_s: float | None
    records_after_drift: Mapping[int, int] = field(default_factory=dict)
    """Drifted records sent up to an event time, for the event times of the alerts."""


@dataclass(frozen=True)
class Seen:
    """What the topics held at the end (``ids`` per audited topic: id -> copies)."""

    ids: Mapping[str, Mapping[str, int]]
    records: Mapping[str, int]
    dlq_records: Mapping[str, int]
    drift_alerts: Sequence[tuple[float, Mapping[str, Any]]]
    reports: Sequence[tuple[float, Mapping[str, Any]]]
    slo_alerts: Sequence[tuple[float, Mapping[str, Any]]]
    duplicates_dropped: float | None = None
    training_auc: float | None = None


@dataclass
class Summary:
    claims: list[Claim]
    figures: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(claim.ok for claim in self.claims)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "claims": [asdict(claim) for claim in self.claims],
            "figures": self.figures,
        }


def first_detection(
    alerts: Iterable[tuple[float, Mapping[str, Any]]],
    drift_event_time_ms: int | None,
    relevant: Callable[[str], bool] = changed_by_drift,
) -> tuple[float, Mapping[str, Any]] | None:
    """The first alert-severity episode on a window of drifted records only (it starts at or
    after the change), on a ``relevant`` feature that had no episode open already when the
    drift began (an episode still open from before detects nothing new)."""
    if drift_event_time_ms is None:
        return None
    ordered = sorted(alerts, key=lambda item: int(item[1]["window_end"]))
    open_before: set[str] = set()
    for seen, alert in ordered:
        feature, state = str(alert["feature"]), alert.get("state")
        if int(alert["window_end"]) < drift_event_time_ms:
            if state == "resolved":
                open_before.discard(feature)
            else:
                open_before.add(feature)
            continue
        if feature in open_before or alert.get("severity") != "alert" or not relevant(feature):
            continue
        if int(alert.get("window_start", alert["window_end"])) < drift_event_time_ms:
            continue  # a window straddling the change: mostly old data, proves nothing
        if state in ("open", "updated"):
            return seen, alert
    return None


def alerts_before(
    alerts: Iterable[tuple[float, Mapping[str, Any]]], drift_event_time_ms: int | None
) -> list[Mapping[str, Any]]:
    """Episodes opened on windows that ended before the drift (false alarms or warm-up)."""
    if drift_event_time_ms is None:
        return []
    return [
        alert
        for _, alert in alerts
        if alert.get("state") == "open" and int(alert["window_end"]) < drift_event_time_ms
    ]


def overall_auc(
    reports: Iterable[tuple[float, Mapping[str, Any]]],
    routes: Sequence[str] = ("primary",),
) -> list[tuple[int, float, str]]:
    """``(window_end, roc_auc, model/version[ route])`` of the unsegmented sliding reports
    of ``routes`` (the route is named when it is not the primary)."""
    return [(end, auc, name) for end, _, auc, name in _overall(reports, routes)]


def _overall(
    reports: Iterable[tuple[float, Mapping[str, Any]]],
    routes: Sequence[str] = ("primary",),
) -> list[tuple[int, int, float, str]]:
    points = []
    for _, report in reports:
        if report.get("segment_field") or report.get("window") != "sliding":
            continue
        route = report.get("route")
        if route not in routes:
            continue
        auc = report.get("roc_auc")
        if auc is None or math.isnan(auc):
            continue
        name = f"{report['model_name']}/{report['model_version']}"
        if route != "primary":
            name += f" ({route})"
        start = int(report.get("window_start") or report["window_end"])
        points.append((int(report["window_end"]), start, float(auc), name))
    return sorted(points)


def _id_claims(sent: Sent, seen: Seen) -> tuple[list[Claim], dict[str, Any]]:
    claims, figures = [], {}
    missing: dict[str, int] = {}
    extra: dict[str, int] = {}
    duplicated: dict[str, int] = {}
    for topic in ("features", "predictions"):
        ids = seen.ids.get(topic, {})
        missing[topic] = len(sent.valid_ids - ids.keys())
        extra[topic] = len(ids.keys() - sent.valid_ids)
        duplicated[topic] = sum(count - 1 for count in ids.values() if count > 1)
        figures[topic] = {
            "records": seen.records.get(topic, 0),
            "distinct_event_ids": len(ids),
            "duplicates": duplicated[topic],
            "missing": missing[topic],
            "unexpected": extra[topic],
        }
    events = seen.ids.get("events", {})
    figures["events"] = {
        "records": seen.records.get("events", 0),
        "distinct_event_ids": len(events),
        "sent_valid": len(sent.valid_ids),
        "sent_duplicates": sent.duplicates,
        "sent_malformed": sent.malformed,
    }
    lost = missing["features"] + missing["predictions"] + extra["features"] + extra["predictions"]
    claims.append(
        Claim(
            "no event lost",
            lost == 0 and len(sent.valid_ids) > 0,
            f"{len(sent.valid_ids)} valid events sent; features missing {missing['features']}, "
            f"predictions missing {missing['predictions']}, unexpected ids "
            f"{extra['features'] + extra['predictions']}",
        )
    )
    dropped = (
        f"; the features service dropped {seen.duplicates_dropped:.0f} duplicates"
        if seen.duplicates_dropped is not None
        else ""
    )
    claims.append(
        Claim(
            "no event duplicated",
            duplicated["features"] == 0 and duplicated["predictions"] == 0,
            f"{sent.duplicates} events sent twice; copies in features "
            f"{duplicated['features']}, in predictions {duplicated['predictions']}{dropped}",
        )
    )
    in_dlq = seen.dlq_records.get("events.dlq", 0)
    others = sum(v for k, v in seen.dlq_records.items() if k != "events.dlq")
    figures["dead_letters"] = dict(seen.dlq_records)
    claims.append(
        Claim(
            "malformed records dead-lettered",
            in_dlq == sent.malformed and others == 0,
            f"{sent.malformed} malformed sent, {in_dlq} in events.dlq, {others} in other DLQs",
        )
    )
    return claims, figures


def evaluate(sent: Sent, seen: Seen) -> Summary:
    """Check every claim; ``figures`` holds the numbers behind them (for JSON and HTML)."""
    claims, figures = _id_claims(sent, seen)
    drift_at = sent.drift_event_time_ms
    figures["drift_event_time_ms"] = drift_at
    figures["labels_sent"] = sent.labels

    detection = first_detection(seen.drift_alerts, drift_at)
    false_alarms = alerts_before(seen.drift_alerts, drift_at)
    unrelated_after = sorted(
        {
            str(a["feature"])
            for _, a in seen.drift_alerts
            if drift_at is not None
            and a.get("state") == "open"
            and int(a["window_end"]) >= drift_at
            and not changed_by_drift(str(a["feature"]))
        }
    )
    if detection is None:
        claims.append(
            Claim(
                "injected drift detected",
                False,
                "no new alert-severity drift episode after the drift"
                if drift_at is not None
                else "the run ended before the drift was injected",
            )
        )
    else:
        seen_s, alert = detection
        window_end = int(alert["window_end"])
        after = sent.records_after_drift.get(window_end)
        latency = (
            f", {seen_s - sent.drift_wall_s:.1f} s wall time after the change"
            if sent.drift_wall_s is not None
            else ""
        )
        figures["drift_detection"] = {
            "feature": alert["feature"],
            "detector": alert["detector"],
            "statistic": alert["statistic"],
            "threshold": alert["threshold"],
            "records_after_change": after,
            "event_time_after_change_s": (window_end - drift_at) / 1000 if drift_at else None,
            "wall_s_after_change": (
                seen_s - sent.drift_wall_s if sent.drift_wall_s is not None else None
            ),
            "false_alarms_before": len(false_alarms),
            "unchanged_features_alerting_after": unrelated_after,
        }
        claims.append(
            Claim(
                "injected drift detected",
                True,
                f"{alert['feature']} ({alert['detector']} {alert['statistic']:.3g} > "
                f"{alert['threshold']:.3g}) after {after} drifted records"
                f"{latency}; {len(false_alarms)} episode(s) opened before the drift, "
                f"{len(unrelated_after)} on features the drift does not change after it",
            )
        )

    claims.append(_quiet_before_claim(seen, drift_at, false_alarms))
    claims.append(_quality_claim(sent, seen, figures))
    return Summary(claims, figures)


def _quiet_before_claim(
    seen: Seen, drift_at: int | None, false_alarms: list[Mapping[str, Any]]
) -> Claim:
    """Zero drift episodes before the injected drift: any one is a false alarm."""
    if drift_at is None:  # nothing was injected: every episode is a false alarm
        false_alarms = [a for _, a in seen.drift_alerts if a.get("state") == "open"]
    features = sorted({f"{a['feature']} ({a['detector']})" for a in false_alarms})
    return Claim(
        "no drift episode before the injected drift",
        not false_alarms,
        f"{len(false_alarms)} episode(s) opened before the drift"
        + (f": {', '.join(features[:8])}" if features else ""),
    )


def _quality_claim(sent: Sent, seen: Seen, figures: dict[str, Any]) -> Claim:
    """Median AUC of the windows before the drift vs of the windows after it: those that
    hold drifted predictions only when there are any, else those that end after it."""
    drift_at = sent.drift_event_time_ms
    if drift_at is None:
        return Claim("quality drop seen", False, "the run ended before the drift was injected")
    points = _overall(seen.reports)
    before = [auc for end, _, auc, _ in points if end < drift_at]
    fully_after = [auc for _, start, auc, _ in points if start >= drift_at]
    after = fully_after or [auc for end, _, auc, _ in points if end >= drift_at]
    baseline = statistics.median(before) if before else seen.training_auc
    level = statistics.median(after) if after else None
    slo_after = [
        alert
        for _, alert in seen.slo_alerts
        if alert.get("state") == "open" and int(alert["window_end"]) >= drift_at
    ]
    figures["quality"] = {
        "auc_before_median": statistics.median(before) if before else None,
        "auc_baseline": baseline,
        "auc_after_median": level,
        "auc_after_min": min(after) if after else None,
        "after_windows": "drifted only" if fully_after else "ending after the drift",
        "reports_before": len(before),
        "reports_after": len(after),
        "slo_alerts_after_drift": len(slo_after),
    }
    dropped = baseline is not None and level is not None and baseline - level >= QUALITY_DROP
    source = "before the drift" if before else "at validation"
    if level is None:
        detail = "no performance report with an AUC after the drift"
    elif baseline is None:
        detail = f"live AUC after the drift {level:.3f}, no baseline"
    else:
        detail = (
            f"live AUC (median) {baseline:.3f} {source} -> {level:.3f} after the drift "
            f"({len(after)} windows, {figures['quality']['after_windows']})"
        )
    detail += f"; {len(slo_after)} SLO alert(s) opened after the drift"
    return Claim("quality drop seen", dropped or bool(slo_after), detail)
