"""Failure-injection scenarios: the clean demo plus one silent failure injected part-way.

``streamml demo run --scenario NAME`` runs the real pipeline (four service processes on a
real broker) with the clean synthetic traffic, injects one failure at ``--drift-at`` (a
share of the duration: the *injection point*) and records every alert the system raises,
read generically from where alerts live:

========== ===================================================================
signal     where it is read
========== ===================================================================
validation a record on a dead-letter topic (``*.dlq``)
fail_stop  a service that stopped (its fail-stop circuit) during the run
drift      an alert-severity episode on ``drift.alerts`` (window tests, detectors)
freshness  a ``drift.alerts`` episode of signal ``freshness`` (stale partition, stuck value),
           the labels stream stalled behind the predictions, or one partition stalled
           behind its topic's others, in the performance service's per-partition event
           time (metrics; :func:`label_stall_alerts`, :func:`partition_stall_alerts`)
slo        an open ``performance.alerts`` record on a realized (label-based) metric
estimated  an open ``performance.alerts`` record whose kind names an estimate
duplicates the features service's dropped duplicates over a few seconds above
           :data:`DUPLICATE_ALERT_SHARE` of its input (metrics)
========== ===================================================================

The time to the first alert is given in wall seconds after the injection and in event
time: how far the stream's event-time clock (the producer's) had moved past the injection
when the alert was seen. Every alert of a ``control`` run, and every alert of any run seen
before its injection, is a false alarm.

Pure, except :func:`prepare_model`, which trains and signs a model version.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streamml.partitioner import partition_for
from streamml.synthetic import Drift

SIGNALS = ("validation", "fail_stop", "drift", "freshness", "slo", "estimated", "duplicates")

DUPLICATE_ALERT_SHARE = 0.15
"""Share of the features service's input dropped as duplicates (over ~5 s of scrapes) that
counts as a duplicate storm: 5x the demo's ordinary 3 % of producer retries."""

DUPLICATE_WINDOW_S = 5.0

DUPLICATE_MIN_RECORDS = 100
"""Records the features service must have read over the window before its share dropped
is judged: at start-up a scrape can see a handful of records, and one producer retry among
six is 16 %."""

FRESHNESS_DETECTORS = frozenset({"stale_partition", "stuck_value"})

LABEL_STALL_EVENT_S = 180.0
"""Event-time seconds the labels stream may fall behind the predictions stream (the
performance service's ``streamml_performance_stream_event_time_seconds``) before it counts
as labels that stopped. Labels are sent as the producer's clock reaches their labeled_at,
so normally the labels stream is level with the predictions or ahead of them."""

LABEL_STALL_FOR_S = 2.0
"""Wall seconds the lag must stay over the limit (a Prometheus ``for:``), so one scrape
taken while the service read a backlog of one topic before the other is not an alert."""

PARTITION_STALL_EVENT_S = 120.0
"""Event-time seconds a partition of an input topic of the performance service may fall
behind the newest partition of the same topic, with nothing left to read on it (consumer
lag at most :data:`PARTITION_STALL_MAX_LAG`), before it counts as a partition whose events
stopped. Partitions are read in the same micro-batches, so in step they differ by a batch
(~10 s of event time at the demo's x40); a partition read behind (a backlog) has lag, so
it is not stopped but unread."""

PARTITION_STALL_MAX_LAG = 1.0
"""Records left to read on a partition that counts as read to its end: the transaction
marker that closes a transactionally written partition stays after its last record
(consumer lag 1 at rest, seen on every fully read predictions partition)."""

PARTITION_STALL_FOR_S = 2.0
"""Wall seconds a partition must stay stalled (a Prometheus ``for:``): ~80 s of event time
at x40, so one scrape between two batches is not an alert."""

LABEL_WAIT_EVENT_S = 3600.0
"""Event time a label-based signal needs after the injection. Labels come at a lognormal
delay (60 % of them: median 15 minutes, 90 % within 54; the rest are chargebacks, days
later), and the performance service's window holds the latest labeled predictions by the
time of their label, so only ~30-50 minutes after the injection is its window mostly of
predictions made after it. Measured offline over 5 seeds (the demo's model, window of
1,000 labels, AUC floor 0.9 for 3 reports): the concept drift's realized-AUC SLO would
open 21-33 minutes after the injection; an hour leaves room for the pipeline's lag."""

EventChange = Callable[[dict[str, Any], int], dict[str, Any] | None]


def _amounts_in_cents(event: dict[str, Any], _partitions: int) -> dict[str, Any]:
    payload = {**event["payload"], "amount": round(event["payload"]["amount"] * 100, 2)}
    return {**event, "payload": payload}


RECODED_COUNTRIES = {"DE": "DEU", "FR": "FRA", "NL": "NLD", "ES": "ESP", "IT": "ITA"}
"""An upstream switch from ISO alpha-2 to alpha-3 codes for the biggest home countries."""


def _countries_recoded(event: dict[str, Any], _partitions: int) -> dict[str, Any]:
    country = event["payload"]["country"]
    payload = {**event["payload"], "country": RECODED_COUNTRIES.get(country, country)}
    return {**event, "payload": payload}


def _device_age_stuck(event: dict[str, Any], _partitions: int) -> dict[str, Any]:
    if event["payload"]["device_age_days"] is None:
        return event  # only a value that is sent gets stuck
    return {**event, "payload": {**event["payload"], "device_age_days": 0}}


STALE_PARTITION = 0


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the demo producer (the project's partitioner, murmur2 as Kafka's
    default: :mod:`streamml.partitioner`) sends a keyed record to.

    >>> partition_of(b"card-000001", 2) in (0, 1)
    True
    """
    return partition_for(key, partitions)


def _partition_stopped(event: dict[str, Any], partitions: int) -> dict[str, Any] | None:
    if partitions > 1 and partition_of(event["entity_id"].encode(), partitions) == STALE_PARTITION:
        return None  # this partition's upstream stopped: its events never come
    return event


@dataclass(frozen=True)
class Scenario:
    """One failure and how it is injected (from the injection point on)."""

    name: str
    failure: str
    expected: tuple[str, ...]
    """Signals that should catch it (the first one to fire is reported)."""
    change: EventChange | None = None
    """Rewrites (or, returning None, drops) each event after the injection point."""
    drift: Drift | None = None
    """The synthetic generator's drift from the injection point on."""
    duplicate_share: float | None = None
    labels_stop: bool = False
    model: str | None = None
    """``worse`` or ``collapse``: a correctly signed version promoted to primary at the
    injection point through the scorer's control topic (:func:`prepare_model`)."""
    before_labels: bool = True
    """Whether it can be seen before any label arrives (False: label-based signals only)."""
    event_s_after: float = 0.0
    """Event time (seconds) the run must go on after the injection before the expected
    signal can fire at all (label-based signals wait for the labels: see
    :data:`LABEL_WAIT_EVENT_S`); :func:`run_length` stretches a run to it."""

    def apply(self, event: dict[str, Any], partitions: int) -> dict[str, Any] | None:
        return event if self.change is None else self.change(event, partitions)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("control", "none: the clean pipeline (every alert is a false alarm)", ()),
        Scenario(
            "units",
            "amounts sent in cents instead of euros",
            ("validation", "drift"),
            change=_amounts_in_cents,
        ),
        Scenario(
            "recoded-category",
            "country codes re-coded (DE -> DEU, FR -> FRA, ...)",
            ("validation", "drift"),
            change=_countries_recoded,
        ),
        Scenario(
            "stuck-field",
            "device age stuck at 0 where it is sent",
            ("freshness", "drift"),
            change=_device_age_stuck,
        ),
        Scenario(
            "stale-partition",
            f"partition {STALE_PARTITION}'s events stop, the others flow",
            ("freshness",),
            change=_partition_stopped,
        ),
        Scenario(
            "covariate-shift",
            "amounts x2.2 and more travel abroad, fraud unchanged",
            ("drift", "estimated"),
            drift=Drift(fraud_camouflage=0.0),
        ),
        Scenario(
            "concept-drift",
            "fraud copies the card's habits (inputs as before; labels reveal it)",
            ("slo",),
            drift=Drift(amount_factor=1.0, foreign_share=0.07, fraud_camouflage=0.6),
            before_labels=False,
            event_s_after=LABEL_WAIT_EVENT_S,
        ),
        Scenario(
            "worse-model",
            "an older, weaker, correctly signed version promoted to primary",
            ("drift", "slo", "estimated"),
            model="worse",
        ),
        Scenario(
            "score-collapse",
            "a correctly signed degenerate version (nearly constant scores) promoted",
            ("freshness", "drift", "slo"),
            model="collapse",
        ),
        Scenario(
            "duplicate-storm", "30 % of events sent twice", ("duplicates",), duplicate_share=0.3
        ),
        Scenario(
            "labels-stop",
            "labels stop arriving",
            ("freshness", "slo"),
            labels_stop=True,
            before_labels=False,
        ),
    )
}


def run_length(
    scenario: Scenario,
    *,
    duration_s: float,
    inject_at: float,
    monitor_after: float,
    compression: float,
) -> tuple[float, float, float]:
    """``(duration_s, inject_at, monitor_after)`` of a run of ``scenario``: as given, or,
    when it needs more event time after the injection than that leaves
    (:attr:`Scenario.event_s_after`), longer after the injection, with the injection and
    the drift service's start at the same wall second (so at the same event time) as in
    the other scenarios' runs.

    >>> run_length(get("units"), duration_s=45, inject_at=0.5, monitor_after=0.15,
    ...            compression=40)
    (45, 0.5, 0.15)
    >>> run_length(get("concept-drift"), duration_s=45, inject_at=0.5, monitor_after=0.15,
    ...            compression=40)
    (112.5, 0.2, 0.06)
    """
    inject_s = duration_s * inject_at
    needed = inject_s + scenario.event_s_after / compression
    if needed <= duration_s:
        return duration_s, inject_at, monitor_after
    return needed, round(inject_s / needed, 6), round(duration_s * monitor_after / needed, 6)


def get(name: str) -> Scenario:
    """The scenario called ``name``; ValueError naming the choices otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"--scenario must be one of {', '.join(SCENARIOS)}, not {name!r}"
        ) from None


# -- alerts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One alert as the suite saw it (``wall_s``: seconds since the producer started)."""

    signal: str
    wall_s: float
    source: str
    detail: str
    event_ms: int | None = None
    """The alert's own event time (its window's end), when it has one: the event time the
    system needed to decide, without the pipeline's lag in getting it out."""


def _event_ms(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):  # a decoder that keeps the logical type
        return int(value.timestamp() * 1000)
    return None


def drift_alerts(records: Iterable[tuple[float, Mapping[str, Any]]]) -> list[Alert]:
    """Alert-severity episodes (opened, or raised to alert) on ``drift.alerts``."""
    out = []
    for wall_s, alert in records:
        if alert.get("severity") != "alert" or alert.get("state") not in ("open", "updated"):
            continue
        detector = str(alert.get("detector"))
        fresh = alert.get("signal") == "freshness" or detector in FRESHNESS_DETECTORS
        out.append(
            Alert(
                "freshness" if fresh else "drift",
                wall_s,
                "drift.alerts",
                f"{alert.get('feature')} {detector} {float(alert.get('statistic', 0)):.3g}",
                _event_ms(alert.get("window_end")),
            )
        )
    return out


def slo_alerts(records: Iterable[tuple[float, Mapping[str, Any]]]) -> list[Alert]:
    """Opened alerts on ``performance.alerts``: estimated or realized by their kind."""
    out = []
    for wall_s, alert in records:
        if alert.get("state") != "open":
            continue
        kind = str(alert.get("kind", ""))
        signal = (
            "estimated" if "estimat" in kind or "estimat" in str(alert.get("metric")) else "slo"
        )
        detail = f"{alert.get('metric')} {float(alert.get('value', 0)):.3f} ({kind})"
        out.append(
            Alert(signal, wall_s, "performance.alerts", detail, _event_ms(alert.get("window_end")))
        )
    return out


def duplicate_alerts(samples: Sequence[tuple[float, float, float]]) -> list[Alert]:
    """``(wall_s, duplicates dropped, records in)`` scrapes of the features service -> an
    alert at each scrape where the share dropped over the last :data:`DUPLICATE_WINDOW_S`
    passes :data:`DUPLICATE_ALERT_SHARE`.

    >>> duplicate_alerts([(0, 0, 0), (5, 30, 1000), (10, 330, 2000)])[0].wall_s
    10

    Scrapes more than the window apart (a loaded machine) are compared with the one before,
    never with themselves:

    >>> duplicate_alerts([(0, 0, 0), (8, 30, 1000), (16, 330, 2000)])[0].wall_s
    16

    Too few records to judge (the first scrapes of a run) is no alert:

    >>> duplicate_alerts([(0, 0, 0), (3, 1, 6), (5, 2, 12)])
    []
    """
    out = []
    start = 0
    for index, (wall_s, dropped, records) in enumerate(samples):
        # the baseline: the latest earlier scrape at least the window old, else the oldest
        while start + 1 < index and samples[start + 1][0] <= wall_s - DUPLICATE_WINDOW_S:
            start += 1
        _, dropped0, records0 = samples[start]
        if records - records0 >= DUPLICATE_MIN_RECORDS:
            share = (dropped - dropped0) / (records - records0)
            if share > DUPLICATE_ALERT_SHARE:
                out.append(Alert("duplicates", wall_s, "metrics", f"{share:.0%} dropped"))
    return out


def label_stall_alerts(samples: Sequence[tuple[float, float, float]]) -> list[Alert]:
    """``(wall_s, predictions event time s, labels event time s)`` scrapes of the
    performance service -> an alert once the labels stream has stayed more than
    :data:`LABEL_STALL_EVENT_S` behind the predictions for :data:`LABEL_STALL_FOR_S`.

    The same rule as ``StreamMLLabelsStalled`` in k8s/monitoring/alerts.yml, at the
    demo's compressed time scale.

    >>> level = [(t, 1000.0 + 40 * t, 1000.0 + 40 * t) for t in range(10)]
    >>> label_stall_alerts(level)
    []
    >>> stopped = [(t, 1000.0 + 40 * t, 1000.0) for t in range(10)]  # over 180 s at t=5
    >>> [alert.wall_s for alert in label_stall_alerts(stopped)]
    [7]
    """
    out: list[Alert] = []
    since: float | None = None
    for wall_s, predictions_s, labels_s in samples:
        behind = predictions_s - labels_s
        if behind <= LABEL_STALL_EVENT_S:
            since = None
            continue
        if since is None:
            since = wall_s
        if wall_s - since >= LABEL_STALL_FOR_S:
            detail = f"labels {behind:.0f} s of event time behind the predictions"
            out.append(Alert("freshness", wall_s, "metrics", detail))
            break
    return out


PartitionMarks = Mapping[tuple[str, int], tuple[float, float]]
"""``(topic, partition) -> (largest event time read, s; consumer lag, records)``."""


def partition_stall_alerts(samples: Sequence[tuple[float, PartitionMarks]]) -> list[Alert]:
    """``(wall_s, marks)`` scrapes of the performance service -> an alert once a partition
    has stayed more than :data:`PARTITION_STALL_EVENT_S` behind its topic's newest partition,
    with nothing unread on it, for :data:`PARTITION_STALL_FOR_S`.

    The same rule as ``StreamMLPartitionStalled`` in k8s/monitoring/alerts.yml, at the
    demo's compressed time scale. Judged at every scrape (a second), on the event time each
    partition reached, not on closed drift windows: the drift service's ``stale_partition``
    needs two of its 3-minute windows to pass without the partition (3 to 6 minutes of event
    time, plus the lag of getting window reports through its two stages).

    >>> def marks(t, stopped_at=None, lag=1):
    ...     p0 = 1000.0 + 40 * (t if stopped_at is None else min(t, stopped_at))
    ...     return (t, {("predictions", 0): (p0, lag), ("predictions", 1): (1000.0 + 40 * t, 0)})
    >>> partition_stall_alerts([marks(t) for t in range(10)])
    []
    >>> [a.wall_s for a in partition_stall_alerts([marks(t, stopped_at=2) for t in range(10)])]
    [8]
    >>> partition_stall_alerts([marks(t, stopped_at=2, lag=500) for t in range(10)])  # unread
    []
    """
    since: dict[tuple[str, int], float] = {}
    for wall_s, marks in samples:
        newest: dict[str, float] = {}
        for (topic, _), (event_s, _) in marks.items():
            newest[topic] = max(newest.get(topic, event_s), event_s)
        for key, (event_s, lag) in sorted(marks.items()):
            behind = newest[key[0]] - event_s
            if behind <= PARTITION_STALL_EVENT_S or lag > PARTITION_STALL_MAX_LAG:
                since.pop(key, None)
                continue
            started = since.setdefault(key, wall_s)
            if wall_s - started >= PARTITION_STALL_FOR_S:
                detail = (f"{key[0]} partition {key[1]} {behind:.0f} s of event time behind, "
                          "nothing unread")  # fmt: skip
                return [Alert("freshness", wall_s, "metrics", detail)]
    return []


def largest_partition_gap(
    samples: Sequence[tuple[float, PartitionMarks]], until_wall_s: float | None = None
) -> float | None:
    """The largest event-time gap (s) of a partition read to its end behind its topic's
    newest partition in the scrapes before ``until_wall_s``: the margin the clean traffic
    leaves under :data:`PARTITION_STALL_EVENT_S`.

    >>> largest_partition_gap([(1.0, {("p", 0): (100.0, 1), ("p", 1): (130.0, 0)}),
    ...                        (2.0, {("p", 0): (100.0, 900), ("p", 1): (400.0, 0)})])
    30.0
    """
    gap: float | None = None
    for wall_s, marks in samples:
        if until_wall_s is not None and wall_s >= until_wall_s:
            break
        newest: dict[str, float] = {}
        for (topic, _), (event_s, _) in marks.items():
            newest[topic] = max(newest.get(topic, event_s), event_s)
        for (topic, _), (event_s, lag) in marks.items():
            if lag <= PARTITION_STALL_MAX_LAG:
                gap = max(gap or 0.0, newest[topic] - event_s)
    return gap


def event_time_at(timeline: Sequence[tuple[float, int]], wall_s: float) -> int | None:
    """The producer's event-time clock at ``wall_s`` (linear between its samples).

    >>> event_time_at([(0.0, 0), (1.0, 40_000)], 0.5)
    20000
    """
    if not timeline:
        return None
    walls = [w for w, _ in timeline]
    i = bisect.bisect_right(walls, wall_s)
    if i == 0:
        return timeline[0][1]
    if i == len(timeline):
        return timeline[-1][1]
    (w0, e0), (w1, e1) = timeline[i - 1], timeline[i]
    return int(e0 + (e1 - e0) * (wall_s - w0) / max(w1 - w0, 1e-9))


@dataclass(frozen=True)
class Outcome:
    """What one scenario run showed."""

    scenario: str
    injection_wall_s: float | None
    injection_event_ms: int | None
    first: Alert | None
    first_wall_s: float | None
    """Wall seconds from the injection to the first alert after it."""
    first_event_s: float | None
    """Event-time seconds from the injection to the first alert after it (as seen: the
    producer's clock when it arrived, so the pipeline's lag counts, compressed x40)."""
    false_alarms: list[Alert]
    after: list[Alert]
    first_alert_event_s: float | None = None
    """Event-time seconds from the injection to the first alert's own event time (its
    window's end): the event time the system needed, without the lag in getting it out."""

    @property
    def detected(self) -> bool:
        return self.first is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "detected": self.detected,
            "first_signal": self.first.signal if self.first else None,
            "first_alert": asdict(self.first) if self.first else None,
            "time_to_alert_wall_s": self.first_wall_s,
            "time_to_alert_event_s": self.first_event_s,
            "alert_event_time_after_injection_s": self.first_alert_event_s,
            "injection_wall_s": self.injection_wall_s,
            "injection_event_ms": self.injection_event_ms,
            "false_alarms": len(self.false_alarms),
            "false_alarm_alerts": [asdict(a) for a in self.false_alarms[:20]],
            "signals_after": sorted({a.signal for a in self.after}),
            "alerts_after": [asdict(a) for a in self.after[:50]],
        }


def outcome(
    scenario: str,
    alerts: Iterable[Alert],
    *,
    injection_wall_s: float | None,
    injection_event_ms: int | None,
    timeline: Sequence[tuple[float, int]],
) -> Outcome:
    """Split the alerts at the injection point: before it (and all of a control run) they
    are false alarms; the first after it is the detection.

    >>> a = [Alert("drift", 12.0, "drift.alerts", "x"), Alert("slo", 3.0, "p", "y")]
    >>> o = outcome("units", a, injection_wall_s=10.0, injection_event_ms=400_000,
    ...             timeline=[(0.0, 0), (20.0, 800_000)])
    >>> (o.first.signal, o.first_wall_s, o.first_event_s, len(o.false_alarms))
    ('drift', 2.0, 80.0, 1)
    """
    ordered = sorted(alerts, key=lambda a: a.wall_s)
    if scenario == "control" or injection_wall_s is None:
        before, after = ordered, []
    else:
        before = [a for a in ordered if a.wall_s < injection_wall_s]
        after = [a for a in ordered if a.wall_s >= injection_wall_s]
    first = after[0] if after else None
    first_wall = first_event = own_event = None
    if first is not None and injection_wall_s is not None:
        first_wall = round(first.wall_s - injection_wall_s, 2)
        at = event_time_at(timeline, first.wall_s)
        if at is not None and injection_event_ms is not None:
            first_event = round((at - injection_event_ms) / 1000, 1)
        if first.event_ms is not None and injection_event_ms is not None:
            own_event = round((first.event_ms - injection_event_ms) / 1000, 1)
    return Outcome(
        scenario,
        injection_wall_s,
        injection_event_ms,
        first,
        first_wall,
        first_event,
        before,
        after,
        own_event,
    )


# -- faulty model versions ----------------------------------------------------------


HELD_OUT_EVENTS = 5000
"""Synthetic events (of another seed than any training set) a scenario's model version is
judged on, as training judges every version on its held-out rows: its calibration map
(fitted on the first half, judged on the second: ~45 positives there, over the 20 a
judgement needs) and its validation metrics."""


def prepare_model(kind: str, models_dir: Path, keys_dir: Path, seed: int) -> tuple[str, str]:
    """Train and sign the version a model scenario promotes; returns (name, version).

    ``worse``: the primary's algorithm trained on 1,500 events only, dated a year back
    (an old version someone promotes by mistake). ``collapse``: a logistic regression
    fitted on all-zero inputs, so it returns its training base rate for everything (a
    broken training job whose output still verifies). Both are signed with the run's key
    and carry the primary's feature set, so the scorer accepts them: only monitoring can
    tell. Each
    carries its own calibration map and validation metrics, measured on
    :data:`HELD_OUT_EVENTS` held-out events as training measures every version's, so the
    performance service estimates its quality from its own map; the decision threshold,
    the reference and the training details are the primary's (version 1's).
    """
    import json

    import numpy as np
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from services.scorer.artifact import load_private_key, next_version, write_version
    from services.scorer.calibration import fit_calibration
    from services.scorer.metadata import ModelMetadata
    from services.scorer.training import (
        PRIMARY_NAME,
        PRIMARY_PARAMS,
        _export,
        _metrics,
        _onnx_scores,
        build_training_set,
    )

    now = dt.datetime.now(dt.UTC)
    estimator: Any
    if kind == "worse":
        matrix = build_training_set(1500, seed + 11)
        estimator = GradientBoostingClassifier(**PRIMARY_PARAMS, random_state=seed)
        algorithm, created = "GradientBoostingClassifier (1,500 events)", now - dt.timedelta(365)
    elif kind == "collapse":
        matrix = build_training_set(2000, seed + 13)
        estimator = LogisticRegression(C=1e-9, max_iter=200)
        algorithm, created = "LogisticRegression (all-zero inputs)", now
    else:
        raise ValueError(f"no model scenario {kind!r}")
    assert matrix.labels is not None
    inputs = matrix.values.astype(np.float32).astype(np.float64)
    if kind == "collapse":
        # The broken job trained on an all-zero matrix: every weight is 0, so the version
        # returns its training base rate (one constant score) whatever the event.
        inputs = np.zeros_like(inputs)
    estimator.fit(inputs, matrix.labels)
    template = json.loads((models_dir / PRIMARY_NAME / "1" / "metadata.json").read_text())
    model_bytes = _export(estimator, len(matrix.names))
    held_out = build_training_set(HELD_OUT_EVENTS, seed + 17)
    assert held_out.labels is not None
    order = np.argsort(held_out.event_times, kind="stable")  # calibration: by event time
    y = held_out.labels[order]
    scores = _onnx_scores(model_bytes, held_out.values[order].astype(np.float32))
    version = next_version(models_dir, PRIMARY_NAME)
    template.update(
        model_version=version,
        algorithm=algorithm,
        created_at=created.isoformat(timespec="seconds"),
        metrics=_metrics(y, scores, float(template["threshold"])),
        calibration=fit_calibration(scores, y).model_dump(),
    )
    key = load_private_key(keys_dir / "signing.key")
    write_version(models_dir, model_bytes, ModelMetadata.model_validate(template), key)
    return PRIMARY_NAME, version
