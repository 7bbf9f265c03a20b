"""The live terminal view (rich): one row per service, one line for the producer and
the topics, drift alerts and live AUC per model version."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from services.demo.observer import ServiceView, by_label, total
from services.demo.producer import ProducerStats


def _n(value: float) -> str:
    return f"{value:,.0f}"


def service_row(name: str, view: ServiceView) -> list[str]:
    """records/s, lag, dead letters and the service's own figure."""
    s = view.samples
    if not view.up:
        return [name, view.note or "[red]down[/red]", "-", "-", "-", "-"]
    ready = total(s, "streamml_ready") >= 1
    halted = total(s, "streamml_halted") >= 1
    state = "[red]HALTED[/red]" if halted else ("[green]ready[/green]" if ready else "starting")
    extra = ""
    if name == "features":
        extra = f"duplicates dropped {_n(total(s, 'streamml_features_duplicates_total'))}"
    elif name == "scorer":
        routes = by_label(s, "streamml_scorer_predictions_total", "route")
        served = sum(v for k, v in routes.items() if k != "shadow") or 1.0
        extra = "routes " + " ".join(
            f"{k} {100 * v / served:.0f}%" for k, v in sorted(routes.items()) if v
        )
    elif name == "drift":
        extra = f"open drift alerts {_n(total(s, 'streamml_drift_open_episodes'))}"
    elif name == "performance":
        extra = f"labels joined {_n(_joined(s))}"
    return [
        name,
        state,
        f"{view.records_in_per_s:,.0f}",
        _n(total(s, "streamml_consumer_lag")),
        _n(total(s, "streamml_dead_letters_total")),
        extra,
    ]


def _joined(samples: Mapping[Any, float]) -> float:
    return total(
        samples, "streamml_performance_window_records", kind="labeled", window="cumulative",
        segment_field="",
    )  # fmt: skip


def quality_rows(samples: Mapping[Any, float]) -> list[list[str]]:
    """Live AUC (sliding window) and label coverage so far (labeled / all predictions of the
    cumulative window; the service's own ``label_coverage`` counts only predictions past
    the label horizon, days away in a demo) per model version and route."""
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if label.get("segment_field"):
            continue
        if name == "streamml_performance_quality":
            if label.get("metric") != "roc_auc" or label.get("window") != "sliding":
                continue
            field = "roc_auc"
        elif name == "streamml_performance_window_records":
            if label.get("window") != "cumulative":
                continue
            field = label.get("kind", "")
        else:
            continue
        key = (label.get("model", ""), label.get("version", ""), label.get("route", ""))
        rows.setdefault(key, {})[field] = value
    out = []
    for (model, version, route), metrics in sorted(rows.items()):
        auc = metrics.get("roc_auc", math.nan)
        predictions, labeled = metrics.get("predictions", 0.0), metrics.get("labeled", 0.0)
        coverage = (
            f"{100 * labeled / predictions:.0f}% ({_n(labeled)}/{_n(predictions)})"
            if predictions
            else "-"
        )
        out.append(
            [f"{model}/{version}", route, "-" if math.isnan(auc) else f"{auc:.3f}", coverage]
        )
    return out


def render(
    *,
    views: Mapping[str, ServiceView],
    stats: ProducerStats,
    elapsed_s: float,
    duration_s: float,
    compression: float,
    topics: Mapping[str, tuple[int, int, int]],
    alerts: Sequence[Mapping[str, Any]],
    phase: str,
) -> Group:
    """The whole live view for one refresh."""
    services = Table(title="services", expand=True)
    for column in ("service", "state", "records/s", "lag", "dead letters", ""):
        services.add_column(column)
    for name, view in views.items():
        services.add_row(*service_row(name, view))

    drift_state = "not yet"
    if stats.drift_wall_s is not None:
        drift_state = f"injected at {stats.drift_wall_s:.0f}s"
    producer = Text(
        f"{phase}  {elapsed_s:5.0f}/{duration_s:.0f}s  sent {stats.valid_sent:,} events "
        f"(+{stats.duplicates_sent} duplicates, {stats.malformed_sent} malformed), "
        f"{stats.labels_sent:,} labels ({stats.labels_pending:,} still in the future)  "
        f"event time x{compression:.0f}  drift: {drift_state}"
    )
    shown = [
        f"{topic} {_n(records)}"
        + (f" ({_n(distinct)} ids, {duplicates} copies)" if distinct else "")
        for topic, (records, distinct, duplicates) in topics.items()
        if records or topic in ("events", "features", "predictions")
    ]
    counts = Text("topics (read_committed): " + " | ".join(shown))

    quality = Table(title="live model quality", expand=True)
    for column in ("model", "route", "AUC (sliding window)", "label coverage (so far)"):
        quality.add_column(column)
    perf = views.get("performance")
    for row in quality_rows(perf.samples if perf else {}):
        quality.add_row(*row)

    opened = [a for a in alerts if a.get("state") == "open"][-5:]
    alert_text = Text("drift alerts: " + (
        ", ".join(f"{a['feature']} ({a['detector']} {a['statistic']:.3g})" for a in opened)
        or "none"
    ))  # fmt: skip
    return Group(producer, services, quality, counts, alert_text)
