"""The demo report: one self-contained HTML file with inline SVG plots (no scripts, no
network), written to ``.demo/report.html``.

Plots: live AUC over event time (per model version, the drift point marked), the drift
statistics over wall time (PSI/KS per feature, the drift point marked), and records/s
per service. Tables: the claims and the counts per topic.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Point = tuple[float, float]
Series = tuple[str, Sequence[Point]]

_COLOURS = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
)  # fmt: skip
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 760, 300, 60, 170, 20, 45


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / count
    return [low + i * step for i in range(count + 1)]


def line_chart(
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    marker_x: float | None = None,
    marker_label: str = "drift injected",
    y_range: tuple[float, float] | None = None,
    hline: tuple[float, str] | None = None,
    markers: Sequence[tuple[float, str]] = (),
) -> str:
    """An SVG line chart; empty series give a note instead of axes. ``marker_x`` and
    ``markers`` (x, label) draw vertical lines at events (a drift, a restart)."""
    points = [p for _, pts in series for p in pts]
    if not points:
        return f'<p class="empty">No data for {html.escape(y_label)}.</p>'
    marks = [*markers, *([(marker_x, marker_label)] if marker_x is not None else [])]
    xs = [p[0] for p in points] + [x for x, _ in marks]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x1 = x0 + 1
    if y_range is not None:
        y0, y1 = y_range
    else:
        ys = [p[1] for p in points] + ([hline[0]] if hline else [])
        y0, y1 = min(0.0, *ys), max(ys) * 1.05 or 1.0
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        y = min(max(y, y0), y1)
        return _TOP + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(y_label)}">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ccc"/>',
    ]
    for t in _ticks(y0, y1):
        parts.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" '
            f'stroke="#eee"/><text x="{_LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" '
            f'font-size="11">{t:.3g}</text>'
        )
    for t in _ticks(x0, x1):
        parts.append(
            f'<text x="{sx(t):.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle" '
            f'font-size="11">{t:.3g}</text>'
        )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2}" y="{_H - 6}" text-anchor="middle" font-size="12">'
        f"{html.escape(x_label)}</text>"
        f'<text x="14" y="{_TOP + plot_h / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {_TOP + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    if hline is not None:
        parts.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{sy(hline[0]):.1f}" '
            f'y2="{sy(hline[0]):.1f}" stroke="#999" stroke-dasharray="2 3"/>'
            f'<text x="{_LEFT + 4}" y="{sy(hline[0]) - 4:.1f}" font-size="10" fill="#666">'
            f"{html.escape(hline[1])}</text>"
        )
    for index, (x, label) in enumerate(marks):
        mx = sx(x)
        parts.append(
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" '
            f'stroke="#d62728" stroke-width="2" stroke-dasharray="6 4"/>'
            f'<text x="{mx + 4:.1f}" y="{_TOP + 12 + 12 * (index % 4)}" font-size="11" '
            f'fill="#d62728">{html.escape(label)}</text>'
        )
    for index, (name, pts) in enumerate(series):
        colour = _COLOURS[index % len(_COLOURS)]
        ordered = sorted(pts)
        if len(ordered) == 1:
            x, y = ordered[0]
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
        else:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ordered)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6"/>'
            )
        ly = _TOP + 14 + index * 16
        parts.append(
            f'<rect x="{_W - _RIGHT + 10}" y="{ly - 9}" width="12" height="3" fill="{colour}"/>'
            f'<text x="{_W - _RIGHT + 26}" y="{ly - 4}" font-size="11">'
            f"{html.escape(name if len(name) <= 24 else name[:23] + '…')}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;font-size:13px} .ok{color:#2ca02c;font-weight:bold}
.fail{color:#d62728;font-weight:bold} .empty{color:#888} .note{color:#555;font-size:13px}
"""


def render(
    *,
    summary: Mapping[str, Any],
    plan: Mapping[str, Any],
    auc_series: Sequence[Series],
    drift_series: Sequence[Series],
    throughput_series: Sequence[Series],
    drift_event_h: float | None,
    drift_wall_s: float | None,
    slo_threshold: float | None,
    alerts: Sequence[Mapping[str, Any]],
    scenario: Mapping[str, Any] | None = None,
) -> str:
    """The whole report as one HTML string (``scenario``: a failure-injection run's
    outcome, :meth:`services.demo.scenarios.Outcome.as_json`, shown as a timeline)."""
    claims = summary.get("claims", [])
    claim_rows = "".join(
        f'<tr><td class="{"ok" if c["ok"] else "fail"}">{"PASS" if c["ok"] else "FAIL"}</td>'
        f"<td>{html.escape(c['name'])}</td><td>{html.escape(c['detail'])}</td></tr>"
        for c in claims
    )
    figures = summary.get("figures", {})
    topic_rows = [
        (
            topic,
            figures.get(topic, {}).get("records", ""),
            figures.get(topic, {}).get("distinct_event_ids", ""),
            figures.get(topic, {}).get("duplicates", ""),
            figures.get(topic, {}).get("missing", ""),
        )
        for topic in ("events", "features", "predictions")
    ]
    topic_rows += [(t, n, "", "", "") for t, n in figures.get("dead_letters", {}).items()]
    alert_rows = [
        (
            a.get("state"),
            a.get("feature"),
            a.get("detector"),
            f"{a.get('statistic', 0):.4g}",
            f"{a.get('threshold', 0):.4g}",
            a.get("severity"),
            dt.datetime.fromtimestamp(int(a["window_end"]) / 1000, dt.UTC).strftime(
                "%Y-%m-%d %H:%M"
            ),
        )
        for a in alerts[:50]
    ]
    hline = (slo_threshold, f"SLO roc_auc >= {slo_threshold}") if slo_threshold else None
    status = "all claims hold" if summary.get("ok") else "some claims FAILED"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>streamml demo report</title><style>{STYLE}</style></head><body>
<h1>streamml demo: {html.escape(status)}</h1>
<p class="note">Written {dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}.
Plan: {html.escape(json.dumps(dict(plan), default=str))}</p>
<h2>Claims</h2><table><tbody>{claim_rows}</tbody></table>
{scenario_timeline(scenario) if scenario is not None else ""}
<h2>Live model quality (performance service, sliding window)</h2>
{
        line_chart(
            auc_series,
            x_label="event time (hours since start)",
            y_label="ROC AUC",
            marker_x=drift_event_h,
            y_range=(0.4, 1.0),
            hline=hline,
        )
    }
<h2>Drift statistics (drift service, last merged window)</h2>
{
        line_chart(
            drift_series,
            x_label="wall time (s since the producer started)",
            y_label="statistic",
            marker_x=drift_wall_s,
        )
    }
<h2>Throughput</h2>
{
        line_chart(
            throughput_series,
            x_label="wall time (s since the producer started)",
            y_label="records in / s",
            marker_x=drift_wall_s,
        )
    }
<h2>Counts per topic</h2>
{_table(topic_rows, ["topic", "records", "distinct event ids", "duplicates", "missing"])}
<h2>Drift alerts</h2>
{
        _table(
            alert_rows,
            [
                "state",
                "feature",
                "detector",
                "statistic",
                "threshold",
                "severity",
                "window end (event time)",
            ],
        )
    }
<h2>Figures</h2><pre>{html.escape(json.dumps(figures, indent=2, default=str))}</pre>
</body></html>
"""


def scenario_timeline(outcome: Mapping[str, Any], width: float = 760.0) -> str:
    """A failure-injection run as a timeline: the injection point, every alert (before it:
    false alarms) and the first alert after it, over wall seconds since the producer
    started, then the same alerts as a table."""
    injected = outcome.get("injection_wall_s")
    alerts = [*outcome.get("false_alarm_alerts", []), *outcome.get("alerts_after", [])]
    end = max([float(a["wall_s"]) for a in alerts] + [float(injected or 0), 1.0]) * 1.05

    def x(wall_s: float) -> float:
        return _LEFT + (width - _LEFT - 20) * wall_s / end

    parts = [f'<line x1="{_LEFT}" y1="40" x2="{width - 20}" y2="40" stroke="#333"/>']
    for tick in _ticks(0, end):
        parts.append(f'<text x="{x(tick):.1f}" y="58" font-size="11" text-anchor="middle">'
                     f"{tick:g}</text>")  # fmt: skip
    if injected is not None:
        parts.append(f'<line x1="{x(injected):.1f}" y1="10" x2="{x(injected):.1f}" y2="46" '
                     'stroke="#d62728" stroke-dasharray="4 3"/>'
                     f'<text x="{x(injected):.1f}" y="9" font-size="11" fill="#d62728" '
                     'text-anchor="middle">injection</text>')  # fmt: skip
    first = outcome.get("first_alert")
    for alert in alerts:
        colour = "#2ca02c" if alert == first else "#ff7f0e"
        parts.append(f'<circle cx="{x(float(alert["wall_s"])):.1f}" cy="40" r="4" '
                     f'fill="{colour}"><title>{html.escape(alert["signal"])}: '
                     f"{html.escape(alert['detail'])}</title></circle>")  # fmt: skip
    if first is not None:
        parts.append(f'<text x="{x(float(first["wall_s"])):.1f}" y="30" font-size="11" '
                     f'fill="#2ca02c">first: {html.escape(first["signal"])}</text>')  # fmt: skip
    svg = (f'<svg width="{width}" height="70" xmlns="http://www.w3.org/2000/svg">'
           + "".join(parts) + "</svg>")  # fmt: skip
    rows = [
        (
            "false alarm" if alert in outcome.get("false_alarm_alerts", []) else "after",
            f"{float(alert['wall_s']):.1f}",
            alert["signal"],
            alert["source"],
            alert["detail"],
        )
        for alert in alerts
    ]
    summary = (
        f"first alert {outcome.get('first_signal')} after "
        f"{outcome.get('time_to_alert_wall_s')} s wall, "
        f"{outcome.get('time_to_alert_event_s')} s event time"
        if outcome.get("detected")
        else "no alert after the injection"
    )
    return (
        f"<h2>Scenario {html.escape(str(outcome.get('scenario')))}: "
        f"{html.escape(summary)}; {outcome.get('false_alarms', 0)} false alarm(s)</h2>"
        f'<p class="note">wall seconds since the producer started</p>{svg}'
        + _table(rows, ["when", "wall s", "signal", "source", "detail"])
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
