"""Stage 2, one partition for the whole stream: merge windows, test, keep alert episodes.

Window reports of every source partition arrive on the 1-partition ``drift.windows``
topic. :class:`EpisodeTracker` adds up the reports of one window (their counts are
mergeable), and closes the window when every source partition has reported it or a
later window (a partition reports a window only once it moved past it, so its part is
complete), or when the slowest partition is ``idle_windows`` windows behind the fastest
(an idle partition must not block alerts forever). A closed window is tested once
against the reference; so a drift seen by four partitions is one test, one signal, and
at most one alert.

Per (stream, feature) there is at most one open *episode* (the score and the positive
share are one: :func:`_group`): a streaming detector's firing (a ``detection`` report,
sent at once by stage 1) or the first window with a signal opens it (DriftAlert
``open``); later signals keep it open and emit ``updated`` only when the severity
escalates; ``resolve_after_windows`` evaluated windows in a row
without a signal resolve it (``resolved``). A window with fewer than
``min_window_records`` records is carried into the next one and tested with it.

Replayed records come as ``replay`` reports (windows of their own event time, see
:mod:`services.drift.replay`): merged per window apart from the live windows, and tested
once the live stream closed ``replay_settle_windows`` windows without a new report of
that window (every partition's part has arrived by then). Their signals open *replay
episodes* (alert id ``<stream>.<feature>.replay.<window>``, ``details.replayed=true``),
separate from the live ones, resolved once every pending replay window was tested (the
replayed period is history: the alert says what it held).

The closing order is the window order and every window decision is a function of merged
counts; streaming firings are held until every other partition's mark (its event time
so far) passed them, and taken with the window closes in one event-time order. So the
alerts do not depend on how the partitions' reports interleave, unless an idle rule
(``idle_windows``, ``detection_idle_windows``) had to let a window or firing go early.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.drift import stats
from services.drift.monitor import DETECTION, FEATURES, PREDICTIONS, PROGRESS
from services.drift.reference import NumericReference, Reference
from services.drift.replay import REPLAY

Severity = Literal["warn", "alert"]
_RANK = {"warn": 1, "alert": 2}
# First wins among signals of one severity: a stopped input explains the others.
_DETECTOR_ORDER = (
    "stale_partition",
    "stuck_value",
    "psi",
    "ks",
    "chi2",
    "missing_rate",
    "positive_rate",
    "adwin",
    "page_hinkley",
    "page_hinkley_spread",
    "kswin",
    "chi2_sliding",
)
FRESHNESS_DETECTORS = frozenset({"stuck_value", "stale_partition"})
"""Detectors of data that stopped (``signal="freshness"`` on the alert), not of data
that changed."""


class WindowTestParams(BaseModel):
    """Thresholds of the window tests and of the alert episodes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psi_warn: float = Field(default=0.1, gt=0, description="PSI at or above: severity warn.")
    psi_alert: float = Field(default=0.25, gt=0, description="PSI at or above: severity alert.")
    ks_alpha: float = Field(
        default=0.05, gt=0, lt=1, description="KS level after the multiple-testing correction."
    )
    ks_correction: Literal["bh", "bonferroni", "none"] = Field(
        default="bh",
        description="Correction across the features of a window: Benjamini-Hochberg, "
        "Bonferroni or none.",
    )
    ks_min_d: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="KS fires only when D is also at least this (effect size): with large "
        "windows any training/serving skew is 'significant', and with small ones a per-window "
        "0.05 level alone would fire several times a day (see drift-tests decision).",
    )
    missing_rate: float = Field(
        default=0.05, gt=0, le=1, description="Share of missing/invalid values that fires."
    )
    chi2_alpha: float = Field(
        default=1e-4,
        gt=0,
        lt=1,
        description="Level of the two-sample chi-square test of a categorical attribute "
        "(window counts vs the reference's counts), Bonferroni-corrected across attributes. "
        "Small because a window is tested every minute (see the drift-tuning page).",
    )
    chi2_min_delta: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="...and the largest change of one category's share must be at least this "
        "(effect-size floor: with large windows any tiny skew is 'significant').",
    )
    positive_rate_z: float = Field(
        default=5.0,
        gt=0,
        description="|z| of the positive-decision share vs the reference's, two-sample (the "
        "reference share is itself estimated from the reference score sample).",
    )
    positive_rate_min_delta: float = Field(
        default=0.01, ge=0, description="And at least this absolute change of the share."
    )
    min_window_records: int = Field(
        default=500,
        ge=1,
        description="A merged window with fewer records is not tested alone: its counts are "
        "carried into the next window until enough (counted and logged as carried).",
    )
    resolve_after_windows: int = Field(
        default=3, ge=1, description="Clean evaluated windows in a row that resolve an episode."
    )
    idle_windows: int = Field(
        default=60,
        ge=1,
        description="Close a window without a partition's report once another partition is "
        "this many windows ahead (the missing one is idle). Large, so that partitions "
        "catching up unevenly after downtime do not get their windows closed early.",
    )
    stuck_std_ratio: float = Field(
        default=1e-3,
        ge=0,
        description="A numeric value whose standard deviation in a tested window is at most "
        "this share of the reference's fires stuck_value (an input that stopped changing, "
        "e.g. a field stuck at 0), when the reference makes a window that constant "
        "implausible (all its values in one reference bin with probability < 1e-6). "
        "0 disables.",
    )
    detection_idle_windows: int = Field(
        default=2,
        ge=1,
        description="A streaming detector's firing waits until every other partition has "
        "read past it (so the first firing of all partitions opens the episode, whatever "
        "order the partitions are read in), but no longer than until another partition is "
        "this many windows past the firing's window: a partition that far behind is taken "
        "as idle, and then which firing comes first depends on read order again. Raise it "
        "where partitions are read far out of step (a backlog after downtime) and alerts "
        "must not depend on it; each window of it is that much more delay when a partition "
        "is really idle.",
    )
    stale_windows: int = Field(
        default=0,
        ge=0,
        description="A source partition this many windows behind the newest partition "
        "fires stale_partition (its events stopped while the others flow), long before "
        "idle_windows closes windows without it. 0 (the default) disables it: judged from "
        "the order window reports arrive in, it also fires while the service reads a "
        "backlog unevenly (a first start or a restart after an outage, one partition's "
        "backlog read before another's), so it suits a service that keeps up; the demo "
        "sets 2.",
    )
    replay_settle_windows: int = Field(
        default=3,
        ge=1,
        description="A window of replayed records is tested once the live stream closed this "
        "many windows since its last report arrived (the other partitions' parts of it have "
        "arrived by then: stage 1 sends a replay window at the latest 2 live windows after "
        "the replay's last record).",
    )
    max_replay_windows: int = Field(
        default=1_000,
        ge=1,
        description="Pending windows of replayed records kept at most (the oldest is tested "
        "early beyond that): bounds the state of a replay of a long period.",
    )
    stream_detector_severity: Severity = Field(
        default="warn", description="Severity of an ADWIN/Page-Hinkley/KSWIN detection."
    )


@dataclass(frozen=True)
class Signal:
    """One detector or test that fired for a feature in a closed window."""

    feature: str
    detector: str
    statistic: float
    threshold: float
    severity: Severity
    p_value: float | None = None


@dataclass
class WindowOutcome:
    """What closing windows produced: alerts to emit and statistics for the gauges."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    statistics: list[tuple[str, str, float]] = field(default_factory=list)
    closed_windows: int = 0
    carried_windows: list[tuple[str, int, int]] = field(default_factory=list)
    """(stream, window index, records) of windows too small to test, carried forward."""
    late_reports: int = 0
    foreign_reports: int = 0
    warming_signals: int = 0
    """Signals on history features still in their warm-up (no episode opened)."""
    partition_lag: list[tuple[str, int, int]] = field(default_factory=list)
    """(stream, source partition, windows behind the newest partition) per report."""
    replay_windows: int = 0
    """Merged windows of replayed records tested."""


class EpisodeTracker:
    """Merges window reports, runs the window tests, keeps the alert episodes."""

    def __init__(self, reference: Reference, params: WindowTestParams) -> None:
        self.reference = reference
        self.params = params
        self.streams: dict[str, dict[str, Any]] = {}
        self.episodes: dict[str, dict[str, Any]] = {}
        self.replays: dict[str, dict[str, Any]] = {}

    # -- input ---------------------------------------------------------------------

    def ingest(self, report: Mapping[str, Any], outcome: WindowOutcome) -> None:
        """Take one window report; close every window it completes into ``outcome``."""
        if report["reference"] != self.reference.fingerprint:
            outcome.foreign_reports += 1
            return
        stream = report["stream"]
        if report.get("kind") == REPLAY:
            self._replayed(stream, report, outcome)
            return
        book = self.streams.setdefault(
            stream, {"parts": {}, "counted": 0, "pending": {}, "closed": None, "expected": 1}
        )
        kind = report.get("kind")
        part = str(report["source_partition"])
        window = int(report["window_index"])
        book["expected"] = max(int(book["expected"]), int(report["source_partitions"]))
        marks: dict[str, int] = book.setdefault("marks", {})
        # A window report: the partition moved into a later window (records from its start).
        mark = int(report["window_end"]) if kind in (DETECTION, PROGRESS) else (
            (window + 1) * int(report["window_ms"]))  # fmt: skip
        marks[part] = max(int(marks.get(part, mark)), mark)
        if kind == PROGRESS:
            self._settle(stream, book, outcome)
            return
        # Event time the stream started at (in these reports): history features are
        # compared only once their window can be full (warm-up).
        start = int(report["window_start"])
        book["start"] = min(int(book.get("start", start)), start)
        if kind == DETECTION:
            book.setdefault("held", []).append(dict(report))
            self._settle(stream, book, outcome)
            return
        book["parts"][part] = max(int(book["parts"].get(part, window)), window)
        self._check_stale(stream, book, report, outcome)
        if book["closed"] is not None and window <= book["closed"]:
            outcome.late_reports += 1
            return
        key = str(window)
        book["pending"][key] = _merge(book["pending"].get(key), report)
        self._settle(stream, book, outcome)
        self._close_replays(stream, book, outcome)

    def _settle(self, stream: str, book: dict[str, Any], outcome: WindowOutcome) -> None:
        """Take held firings and close windows, in event-time order, as far as they are
        final: a firing once no partition can still send an earlier one (every other
        partition's mark passed it), a window once every partition reported it. So the
        alerts are a function of the partitions' records, whatever the order their reports
        arrive in; a firing waits for the other partitions' next batch, not for a window.
        """
        held: list[dict[str, Any]] = book.setdefault("held", [])
        while True:
            firing = min(held, key=_firing_order) if held else None
            pending = [int(w) for w in book["pending"]]
            window = min(pending) if pending else None
            if firing is not None and (window is None or int(firing["window_index"]) <= window):
                if not self._firing_final(book, firing):
                    return
            elif window is not None and self._close_window(stream, book, window, outcome):
                continue
            elif firing is None or not self._firing_idle(book, firing):
                return
            # An earlier window waits for an idle partition (``idle_windows``): the firing
            # does not wait with it.
            held.remove(firing)
            self._detected(stream, book, firing, outcome)

    def _firing_idle(self, book: Mapping[str, Any], firing: Mapping[str, Any]) -> bool:
        """Another partition is ``detection_idle_windows`` past the firing's window: the
        partitions that have not read past it are taken as idle."""
        window, width = int(firing["window_index"]), int(firing["window_ms"])
        newest = max(int(mark) for mark in book["marks"].values())
        return newest >= (window + self.params.detection_idle_windows) * width

    def _firing_final(self, book: Mapping[str, Any], firing: Mapping[str, Any]) -> bool:
        """No partition can send a firing that comes before this one any more (or the
        others are idle: :meth:`_firing_idle`)."""
        if self._firing_idle(book, firing):
            return True
        marks: Mapping[str, int] = book["marks"]
        part, mark = int(firing["source_partition"]), int(firing["window_end"])
        for other in range(int(book["expected"])):
            seen = marks.get(str(other))
            if other != part and (seen is None or (seen, other) < (mark, part)):
                return False
        return True

    def _close_window(
        self, stream: str, book: dict[str, Any], window: int, outcome: WindowOutcome
    ) -> bool:
        """Close ``window`` if every partition reported it or a later one (or one is idle)."""
        reported = [book["parts"].get(str(p)) for p in range(int(book["expected"]))]
        complete = all(w is not None and w >= window for w in reported)
        newest = max((int(w) for w in book["parts"].values()), default=window)
        if not complete and newest < window + self.params.idle_windows:
            return False
        merged = book["pending"].pop(str(window))
        book["closed"] = window
        carried = book.get("carry")
        if carried is not None:
            merged = _combine(carried, merged)
            book["carry"] = None
        if int(merged["records"]) < self.params.min_window_records:
            # Too few records to test: never silently skipped, merged into the next.
            book["carry"] = merged
            outcome.carried_windows.append((stream, window, int(merged["records"])))
            return True
        outcome.closed_windows += 1
        # Records of the windows tested so far: a function of the windows, not of the
        # order the partitions' reports arrived in.
        book["counted"] = int(book["counted"]) + int(merged["records"])
        self._evaluate(stream, merged, int(book["counted"]), outcome)
        return True

    # -- replayed records ------------------------------------------------------------

    def _replayed(self, stream: str, report: Mapping[str, Any], outcome: WindowOutcome) -> None:
        """A partition's window of replayed records: merged with the other partitions'
        reports of that window until every partition's part has arrived."""
        rbook = self.replays.setdefault(
            stream, {"pending": {}, "since": {}, "carry": None, "counted": 0, "last": -1}
        )
        # The live window of the reporting partition: a replay copies a range to every
        # partition at about the same time, so the other partitions' copies sit at about
        # the same live position in their logs.
        parts = self.streams.get(stream, {}).get("parts", {})
        live = int(parts.get(str(report["source_partition"]), -1))
        key = str(int(report["window_index"]))
        rbook["pending"][key] = _merge(rbook["pending"].get(key), report)
        rbook["since"][key] = max(int(rbook["since"].get(key, -1)), live)
        rbook["last"] = max(int(rbook["last"]), live)
        while len(rbook["pending"]) > self.params.max_replay_windows:
            oldest = min(rbook["pending"], key=int)
            self._test_replay(stream, rbook, oldest, outcome)

    def _close_replays(self, stream: str, book: Mapping[str, Any], outcome: WindowOutcome) -> None:
        """Test the replay windows whose parts all arrived: from each partition either its
        report of the window or, past it, ``replay_settle_windows`` live windows (stage 1
        sends a partition's replay windows at the latest 2 live windows after its last
        replayed record). Once none is pending and every partition settled past the last
        replay report, the replay episodes of the stream resolve (the period was tested)."""
        rbook = self.replays.get(stream)
        if rbook is None:
            return
        settle = self.params.replay_settle_windows
        progress = [int(book["parts"].get(str(p), -1)) for p in range(int(book["expected"]))]
        slowest = min(progress) if progress else -1
        ready = []
        for key in sorted(rbook["pending"], key=int):
            reported = rbook["pending"][key]["offsets"]
            since = int(rbook["since"][key])
            if not all(str(p) in reported or at >= since + settle for p, at in enumerate(progress)):
                break  # in window order: the first replayed window is tested first
            ready.append(key)
        for key in ready:
            self._test_replay(stream, rbook, key, outcome)
        if rbook["pending"] or slowest < int(rbook["last"]) + settle:
            return  # the replay goes on (or its last windows are still to come)
        for name, episode in sorted(self.episodes.items()):
            if episode["stream"] != stream or not episode.get("replay"):
                continue
            del self.episodes[name]
            detector = episode["detectors"][0]
            feature = episode["feature"]
            last = Signal("decision" if detector == "positive_rate" else feature, detector,
                          float(episode["peak"].get(detector, 0.0)), self._threshold(detector),
                          episode["severity"])  # fmt: skip
            merged = episode["last"]
            outcome.alerts.append(self._alert(episode=episode, signal=last, state="resolved",
                                              merged=merged, seen=int(rbook["counted"]),
                                              signals=[]))  # fmt: skip

    def _test_replay(
        self, stream: str, rbook: dict[str, Any], key: str, outcome: WindowOutcome
    ) -> None:
        merged = rbook["pending"].pop(key)
        del rbook["since"][key]
        if rbook["carry"] is not None:
            merged = _combine(rbook["carry"], merged)
            rbook["carry"] = None
        if int(merged["records"]) < self.params.min_window_records:
            rbook["carry"] = merged  # tested with the next replay window
            outcome.carried_windows.append((f"{stream}/replay", int(key), int(merged["records"])))
            return
        outcome.replay_windows += 1
        rbook["counted"] = int(rbook["counted"]) + int(merged["records"])
        self._evaluate(stream, merged, int(rbook["counted"]), outcome, replay=True)

    def _detected(
        self,
        stream: str,
        book: Mapping[str, Any],
        report: Mapping[str, Any],
        outcome: WindowOutcome,
    ) -> None:
        """A streaming detector fired on one partition: open (or feed) the episode now.

        One partition's firing is enough, as it was when firings were merged per window;
        a firing in a window already tested is late (that window's report carried it).
        The alert is a function of that firing alone (``records_seen`` is the firing
        partition's count; the alert's window is the firing record's event time), and
        :meth:`_settle` takes firings in mark order, so the first firing of all partitions
        opens the episode, whichever partition's report arrived first.
        """
        window = int(report["window_index"])
        if book["closed"] is not None and window <= int(book["closed"]):
            return
        part = str(report["source_partition"])
        offset = int(report["first_offset"])
        merged = {
            "window_index": window,
            "window_start": int(report["window_start"]),
            "window_end": int(report["window_start"]),
            "records": 0,
            "offsets": {part: [offset, offset]},
            "numeric": {},
        }
        severity = self.params.stream_detector_severity
        by_group: dict[str, list[Signal]] = {}
        for hit in report["detections"]:
            signal = Signal(hit["feature"], hit["detector"], float(hit["estimate"]),
                            float(hit["threshold"]), severity)  # fmt: skip
            by_group.setdefault(_group(stream, signal.feature), []).append(signal)
        for group, signals in sorted(by_group.items()):
            self._advance(stream=stream, feature=group, signals=signals, evaluated=False,
                          current={}, merged=merged, seen=int(report["records_seen"]),
                          outcome=outcome, immediate=True)  # fmt: skip

    def _check_stale(
        self,
        stream: str,
        book: dict[str, Any],
        report: Mapping[str, Any],
        outcome: WindowOutcome,
    ) -> None:
        """Freshness: a source partition of a stream that reported no new window while the
        newest window of any stream moved ``stale_windows`` on opens a ``stale_partition``
        episode (feature ``partition N`` of its stream); its reports of three newer windows
        resolve it. Measured from the partition's own last progress (or its stream's first
        report, for a partition not heard from since), so a partition that runs behind but
        moves (read unevenly, catching up) is not stale. Across streams, so predictions of
        the reference's model that stop while features flow (another version promoted,
        the scorer down) are stale too: the prediction tests would be blind."""
        newest = max(int(w) for other in self.streams.values() for w in other["parts"].values())
        fresh: dict[str, int] = book.setdefault("fresh", {})
        part = str(report["source_partition"])
        if int(report["window_index"]) >= int(book["parts"][part]) or part not in fresh:
            fresh[part] = newest  # this partition moved: it is fresh as of the newest window
        # A partition not heard from since its stream's first report counts from there:
        # one that stopped before its first window closed is stale too.
        first = int(book.setdefault("first_window", newest))
        for index in range(int(book["expected"])):
            fresh.setdefault(str(index), first)
        if self.params.stale_windows <= 0:
            return
        for name, other in sorted(self.streams.items()):
            for source, since in sorted(other.get("fresh", {}).items(), key=lambda kv: int(kv[0])):
                lag = newest - int(since)
                outcome.partition_lag.append((name, int(source), lag))
                feature = f"partition {source}"
                key = f"{name}:{feature}"
                if lag >= self.params.stale_windows and key not in self.episodes:
                    signals = [Signal(feature, "stale_partition", float(lag),
                                      float(self.params.stale_windows), "alert")]  # fmt: skip
                elif lag == 0 and key in self.episodes and (name, source) == (stream, part):
                    signals = []  # one more window of the partition caught up
                else:
                    continue
                merged = {
                    "window_index": newest,
                    "window_start": int(report["window_start"]),
                    "window_end": int(report["window_end"]),
                    "records": 0,
                    "offsets": {},
                    "numeric": {},
                }
                self._advance(stream=name, feature=feature, signals=signals, evaluated=True,
                              current={(feature, "stale_partition"): float(lag)}, merged=merged,
                              seen=int(report["records_seen"]), outcome=outcome,
                              immediate=bool(signals))  # fmt: skip

    # -- tests ---------------------------------------------------------------------

    def _numeric_refs(self, stream: str) -> dict[str, NumericReference]:
        if stream == PREDICTIONS:
            return {"score": self.reference.score} if self.reference.score else {}
        return dict(self.reference.numeric)

    def _evaluate(
        self,
        stream: str,
        merged: dict[str, Any],
        seen: int,
        outcome: WindowOutcome,
        *,
        replay: bool = False,
    ) -> None:
        signals: dict[str, list[Signal]] = {}
        evaluated: set[str] = set()

        def fire(signal: Signal) -> None:
            signals.setdefault(_group(stream, signal.feature), []).append(signal)

        self._numeric_tests(stream, merged, outcome, evaluated, fire)
        if stream == FEATURES:
            self._categorical_tests(merged, outcome, evaluated, fire)
        if stream == PREDICTIONS:
            self._positive_rate_test(merged, outcome, evaluated, fire)
        for hit in merged["detections"]:
            fire(Signal(hit["feature"], hit["detector"], float(hit["estimate"]),
                        float(hit["threshold"]), self.params.stream_detector_severity))  # fmt: skip

        current = {(f, t): v for f, t, v in outcome.statistics}
        features = set(signals) | {
            ep["feature"]
            for ep in self.episodes.values()
            if ep["stream"] == stream and bool(ep.get("replay")) == replay
        }
        for feature in sorted(features):
            self._advance(stream=stream, feature=feature, signals=signals.get(feature, []),
                          evaluated=feature in evaluated, current=current, merged=merged, seen=seen,
                          outcome=outcome, replay=replay)  # fmt: skip

    def _numeric_tests(
        self,
        stream: str,
        merged: dict[str, Any],
        outcome: WindowOutcome,
        evaluated: set[str],
        fire: Callable[[Signal], None],
    ) -> None:
        """Missing rate, PSI and KS (corrected over the window's features) per numeric sketch."""
        p = self.params
        ks_tests: list[tuple[str, float, float]] = []
        refs = self._numeric_refs(stream)
        for name, sketch in merged["numeric"].items():
            ref = refs.get(name)
            if ref is None:
                continue
            count, missing = int(sketch["count"]), int(sketch["missing"])
            total = count + missing
            if total >= p.min_window_records:
                evaluated.add(_group(stream, name))
                rate = missing / total
                outcome.statistics.append((name, "missing_rate", rate))
                if rate >= p.missing_rate:
                    fire(Signal(name, "missing_rate", rate, p.missing_rate, "alert"))
            if count < p.min_window_records:
                continue
            stuck = _stuck(ref, sketch, p.stuck_std_ratio)
            if stuck is not None:
                outcome.statistics.append((name, "std_ratio", stuck))
                fire(Signal(name, "stuck_value", stuck, p.stuck_std_ratio, "alert"))
            value = stats.psi(ref.expected, np.asarray(sketch["psi"], dtype=np.int64))
            outcome.statistics.append((name, "psi", value))
            if value >= p.psi_warn:
                severity: Severity = "alert" if value >= p.psi_alert else "warn"
                fire(Signal(name, "psi", value, p.psi_alert if severity == "alert" else p.psi_warn,
                            severity))  # fmt: skip
            d, p_value = stats.ks_binned(
                ref.ks_reference_cdf, np.asarray(sketch["ks"], dtype=np.int64), ref.sample_size
            )
            outcome.statistics.append((name, "ks", d))
            ks_tests.append((name, d, p_value))
        for (name, d, _), adjusted in zip(ks_tests, self._correct(ks_tests), strict=True):
            if adjusted < p.ks_alpha and d >= p.ks_min_d:
                fire(Signal(name, "ks", d, p.ks_min_d, "alert", p_value=adjusted))

    def _categorical_tests(
        self,
        merged: dict[str, Any],
        outcome: WindowOutcome,
        evaluated: set[str],
        fire: Callable[[Signal], None],
    ) -> None:
        """Missing rate, chi-square (Bonferroni) and PSI per categorical feature sketch."""
        p = self.params
        for name, sketch in merged["categorical"].items():
            cat_ref = self.reference.categorical.get(name)
            if cat_ref is None:
                continue
            counts = np.asarray(sketch["counts"], dtype=np.int64)
            total = int(counts.sum()) + int(sketch["missing"])
            if total < p.min_window_records:
                continue
            evaluated.add(name)
            rate = int(sketch["missing"]) / total
            outcome.statistics.append((name, "missing_rate", rate))
            if rate >= p.missing_rate:
                fire(Signal(name, "missing_rate", rate, p.missing_rate, "alert"))
            if counts.sum() < p.min_window_records:
                continue
            value = stats.psi(cat_ref.expected, counts)
            chi2, chi2_p = stats.chi_square_two_sample(
                cat_ref.expected, counts, cat_ref.sample_size
            )
            chi2_p = min(1.0, chi2_p * len(self.reference.categorical))  # Bonferroni
            delta = stats.largest_share_change(cat_ref.expected, counts)
            outcome.statistics.append((name, "psi", value))
            outcome.statistics.append((name, "chi2", chi2))
            if chi2_p < p.chi2_alpha and delta >= p.chi2_min_delta:
                fire(Signal(name, "chi2", delta, p.chi2_min_delta, "alert", p_value=chi2_p))
            if value >= p.psi_warn:
                sev: Severity = "alert" if value >= p.psi_alert else "warn"
                fire(Signal(name, "psi", value, p.psi_alert if sev == "alert" else p.psi_warn,
                            sev, p_value=chi2_p))  # fmt: skip

    def _positive_rate_test(
        self,
        merged: dict[str, Any],
        outcome: WindowOutcome,
        evaluated: set[str],
        fire: Callable[[Signal], None],
    ) -> None:
        """The window's positive-decision share against the reference (two-sample z)."""
        p = self.params
        decisions = int(merged["decisions"])
        if self.reference.positive_rate is None or decisions < p.min_window_records:
            return
        evaluated.add(_group(PREDICTIONS, "decision"))
        share = int(merged["positives"]) / decisions
        z = stats.proportion_z_two_sample(
            int(merged["positives"]),
            decisions,
            self.reference.positive_rate,
            self.reference.positive_rate_sample,
        )
        outcome.statistics.append(("decision", "positive_rate", share))
        if (
            abs(z) >= p.positive_rate_z
            and abs(share - self.reference.positive_rate) >= p.positive_rate_min_delta
        ):
            fire(Signal("decision", "positive_rate", share, self.reference.positive_rate,
                        "alert"))  # fmt: skip

    def _threshold(self, detector: str) -> float:
        """The warn-level threshold of a window test (0 for streaming detectors)."""
        p = self.params
        return {
            "psi": p.psi_warn,
            "ks": p.ks_min_d,
            "missing_rate": p.missing_rate,
            "positive_rate": self.reference.positive_rate or 0.0,
        }.get(detector, 0.0)

    def _correct(self, tests: list[tuple[str, float, float]]) -> list[float]:
        p_values = [p for _, _, p in tests]
        if self.params.ks_correction == "bh":
            return stats.benjamini_hochberg(p_values)
        if self.params.ks_correction == "bonferroni":
            return [min(1.0, p * len(p_values)) for p in p_values]
        return p_values

    # -- episodes ------------------------------------------------------------------

    def _advance(
        self,
        *,
        stream: str,
        feature: str,
        signals: list[Signal],
        evaluated: bool,
        current: Mapping[tuple[str, str], float],
        merged: dict[str, Any],
        seen: int,
        outcome: WindowOutcome,
        immediate: bool = False,
        replay: bool = False,
    ) -> None:
        """One episode group's signals in a closed window (or, ``immediate``, a streaming
        detector's firing before its window closed: it opens or feeds the episode but is
        not a window, so it neither counts as a fired window nor resolves)."""
        key = f"{stream}:{feature}" + (":replay" if replay else "")
        episode = self.episodes.get(key)
        if replay and episode is not None and signals:
            episode["last"] = _window_only(merged)
        if signals and episode is None and not replay and self._warming(stream, feature, merged):
            outcome.warming_signals += len(signals)
            return
        if signals:
            top = max(
                signals, key=lambda s: (_RANK[s.severity], -_DETECTOR_ORDER.index(s.detector))
            )
            detectors = sorted({s.detector for s in signals}, key=_DETECTOR_ORDER.index)
            if episode is None:
                kind = "replay." if replay else ""
                episode = {
                    "alert_id": f"{stream}.{feature}.{kind}{merged['window_index']}",
                    "stream": stream,
                    "feature": feature,
                    "severity": top.severity,
                    "detectors": detectors,
                    "opened_window": merged["window_index"],
                    # the window of an immediate firing counts when it closes
                    "windows_fired": 0 if immediate else 1,
                    "clean": 0,
                    "peak": {s.detector: s.statistic for s in signals},
                }
                if replay:  # history: resolved once the replayed period was tested
                    episode["replay"] = True
                    episode["last"] = _window_only(merged)
                self.episodes[key] = episode
                outcome.alerts.append(
                    self._alert(
                        episode=episode,
                        signal=top,
                        state="open",
                        merged=merged,
                        seen=seen,
                        signals=signals,
                    )
                )
                return
            episode["clean"] = 0
            if not immediate:
                episode["windows_fired"] += 1
            episode["detectors"] = sorted(
                set(episode["detectors"]) | set(detectors), key=_DETECTOR_ORDER.index
            )
            for s in signals:
                episode["peak"][s.detector] = max(
                    float(episode["peak"].get(s.detector, s.statistic)), s.statistic
                )
            if _RANK[top.severity] > _RANK[episode["severity"]]:
                episode["severity"] = top.severity
                outcome.alerts.append(
                    self._alert(
                        episode=episode,
                        signal=top,
                        state="updated",
                        merged=merged,
                        seen=seen,
                        signals=signals,
                    )
                )
            return
        if episode is None or not evaluated:
            return
        if int(merged["window_index"]) <= int(episode["opened_window"]):
            return  # a window before an immediate firing (partitions lag): not evidence
        episode["clean"] += 1
        if episode["clean"] >= self.params.resolve_after_windows:
            del self.episodes[key]
            detector = episode["detectors"][0]
            last = Signal(
                "decision" if detector == "positive_rate" else feature,
                detector,
                current.get((feature, detector), 0.0),
                self._threshold(detector),
                episode["severity"],
            )
            outcome.alerts.append(
                self._alert(
                    episode=episode,
                    signal=last,
                    state="resolved",
                    merged=merged,
                    seen=seen,
                    signals=[],
                )
            )

    def _warming(self, stream: str, feature: str, merged: Mapping[str, Any]) -> bool:
        """Whether ``feature`` is still in its warm-up: its histories cannot be as deep as
        the reference's yet, so a difference is the start, not drift."""
        ref = self._numeric_refs(stream).get(feature)
        if ref is None or ref.warmup_ms <= 0:
            return False
        start = int(self.streams.get(stream, {}).get("start", merged["window_start"]))
        return int(merged["window_end"]) < start + ref.warmup_ms

    def _alert(
        self,
        *,
        episode: Mapping[str, Any],
        signal: Signal,
        state: str,
        merged: Mapping[str, Any],
        seen: int,
        signals: list[Signal],
    ) -> dict[str, Any]:
        offsets: Mapping[str, list[int]] = merged["offsets"]
        single = next(iter(offsets.values())) if len(offsets) == 1 else None
        details = {
            "stream": episode["stream"],
            "window_index": str(merged["window_index"]),
            "window_records": str(merged["records"]),
            "partitions": ",".join(sorted(offsets, key=int)),
            "offsets": ";".join(f"{p}:{lo}-{hi}" for p, (lo, hi) in sorted(offsets.items(),
                                                                          key=lambda i: int(i[0]))),
            "detectors": ",".join(episode["detectors"]),
            "windows_fired": str(episode["windows_fired"]),
            "signals": ",".join(f"{s.detector}={s.statistic:.4g}" for s in signals),
        }  # fmt: skip
        if episode.get("replay"):
            details["replayed"] = "true"
        if state == "resolved":
            details["peak"] = ",".join(f"{k}={v:.4g}" for k, v in sorted(episode["peak"].items()))
        sketch = merged["numeric"].get(signal.feature)
        ref = self._numeric_refs(episode["stream"]).get(signal.feature)
        if sketch is not None and ref is not None and sketch["count"]:
            details["reference_mean"] = f"{ref.mean:.6g}"
            details["window_mean"] = f"{sketch['sum'] / sketch['count']:.6g}"
        return {
            "alert_id": episode["alert_id"],
            "feature": signal.feature,
            "detector": signal.detector,
            "statistic": float(signal.statistic),
            "threshold": float(signal.threshold),
            "p_value": signal.p_value,
            "severity": episode["severity"] if state != "open" else signal.severity,
            "state": state,
            "window_start": int(merged["window_start"]),
            "window_end": int(merged["window_end"]),
            "first_offset": None if single is None else int(single[0]),
            "last_offset": None if single is None else int(single[1]),
            "model_name": self.reference.model_name,
            "model_version": self.reference.model_version,
            "records_seen": seen,
            "details": details,
            "signal": "freshness" if signal.detector in FRESHNESS_DETECTORS else "drift",
        }

    # -- explicit state ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"streams": self.streams, "episodes": self.episodes, "replays": self.replays}

    def load(self, state: Mapping[str, Any]) -> None:
        self.streams = dict(state["streams"])
        self.episodes = dict(state["episodes"])
        self.replays = dict(state.get("replays", {}))


def _stuck(ref: NumericReference, sketch: Mapping[str, Any], ratio: float) -> float | None:
    """The window's standard deviation over the reference's when the value is stuck
    (at most ``ratio``) and the reference makes so constant a window implausible; else None.

    >>> import numpy as np
    >>> ref = NumericReference(name="x", edges=np.array([1.0, 2.0]),
    ...     expected=np.array([0.3, 0.4, 0.3]), ks_grid=np.array([1.0]),
    ...     ks_reference_cdf=np.array([0.5]), pit_scores=np.array([]), sample_size=1000,
    ...     mean=1.5, std=1.0)
    >>> _stuck(ref, {"count": 600, "sum": 0.0, "sum_squares": 0.0}, 1e-3)
    0.0
    >>> _stuck(ref, {"count": 600, "sum": 600.0, "sum_squares": 1200.0}, 1e-3) is None
    True
    """
    count = int(sketch["count"])
    if ratio <= 0 or count < 2 or ref.std <= 0:
        return None
    mean = float(sketch["sum"]) / count
    variance = max(0.0, float(sketch["sum_squares"]) / count - mean * mean)
    # sum of squares in float64 loses ~1e-16 relative: tolerate that much spread.
    std = math.sqrt(variance) if variance > 1e-12 * max(1.0, mean * mean) else 0.0
    if std > ratio * ref.std:
        return None
    one_bin = float(np.sum(np.asarray(ref.expected, dtype=np.float64) ** count))
    return std / ref.std if one_bin < 1e-6 else None


def _firing_order(report: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """Held firings are taken by (window, mark, partition, offset): event-time order."""
    return (int(report["window_index"]), int(report["window_end"]),
            int(report["source_partition"]), int(report["first_offset"]))  # fmt: skip


def _window_only(merged: Mapping[str, Any]) -> dict[str, Any]:
    """What a resolved alert needs of the last window an episode fired in (not its counts)."""
    return {
        "window_index": merged["window_index"],
        "window_start": merged["window_start"],
        "window_end": merged["window_end"],
        "records": merged["records"],
        "offsets": merged["offsets"],
        "numeric": {},
    }


def _group(stream: str, feature: str) -> str:
    """The episode a feature's signals belong to.

    The positive-decision share is a function of the score (score >= threshold), so a
    score shift moves both: one cause, one episode (``score``). Features are not grouped:
    which feature moved is what the operator needs to know.
    """
    if stream == PREDICTIONS and feature == "decision":
        return "score"
    return feature


def _combine(carried: dict[str, Any], merged: dict[str, Any]) -> dict[str, Any]:
    """Counts of a window too small to test, added into the next closed window."""
    out = dict(merged)
    out["window_start"] = min(int(carried["window_start"]), int(merged["window_start"]))
    out["window_end"] = max(int(carried["window_end"]), int(merged["window_end"]))
    out["records"] = int(carried["records"]) + int(merged["records"])
    out["late"] = int(carried["late"]) + int(merged["late"])
    offsets = {k: list(v) for k, v in carried["offsets"].items()}
    for part, (lo, hi) in merged["offsets"].items():
        old = offsets.get(part)
        offsets[part] = [lo, hi] if old is None else [min(lo, old[0]), max(hi, old[1])]
    out["offsets"] = offsets
    numeric = {k: dict(v) for k, v in carried["numeric"].items()}
    for name, sketch in merged["numeric"].items():
        into = numeric.get(name)
        if into is None:
            numeric[name] = dict(sketch)
            continue
        for field_name in ("count", "missing", "sum", "sum_squares"):
            into[field_name] = into[field_name] + sketch[field_name]
        into["psi"] = _add(into["psi"], sketch["psi"])
        into["ks"] = _add(into["ks"], sketch["ks"])
    out["numeric"] = numeric
    categorical = {k: dict(v) for k, v in carried["categorical"].items()}
    for name, sketch in merged["categorical"].items():
        into = categorical.get(name)
        if into is None:
            categorical[name] = dict(sketch)
            continue
        into["counts"] = _add(into["counts"], sketch["counts"])
        into["missing"] = into["missing"] + sketch["missing"]
    out["categorical"] = categorical
    out["decisions"] = int(carried["decisions"]) + int(merged["decisions"])
    out["positives"] = int(carried["positives"]) + int(merged["positives"])
    out["detections"] = sorted(
        [*carried["detections"], *merged["detections"]],
        key=lambda d: (d["feature"], d["detector"], d["event_time"]),
    )
    return out


def _merge(merged: dict[str, Any] | None, report: Mapping[str, Any]) -> dict[str, Any]:
    """Add one partition's window report into the window's merged counts."""
    part = str(report["source_partition"])
    if merged is None:
        merged = {
            "window_index": int(report["window_index"]),
            "window_start": int(report["window_start"]),
            "window_end": int(report["window_end"]),
            "records": 0,
            "late": 0,
            "offsets": {},
            "numeric": {},
            "categorical": {},
            "decisions": 0,
            "positives": 0,
            "detections": [],
        }
    merged["window_start"] = min(merged["window_start"], int(report["window_start"]))
    merged["window_end"] = max(merged["window_end"], int(report["window_end"]))
    merged["records"] += int(report["records"])
    merged["late"] += int(report["late_records"])
    lo, hi = int(report["first_offset"]), int(report["last_offset"])
    if part in merged["offsets"]:
        old = merged["offsets"][part]
        lo, hi = min(lo, old[0]), max(hi, old[1])
    merged["offsets"][part] = [lo, hi]
    for sketch in report["numeric"]:
        into = merged["numeric"].setdefault(
            sketch["name"],
            {"count": 0, "missing": 0, "sum": 0.0, "sum_squares": 0.0, "psi": None, "ks": None},
        )
        into["count"] += int(sketch["count"])
        into["missing"] += int(sketch["missing"])
        into["sum"] += float(sketch["sum"])
        into["sum_squares"] += float(sketch["sum_squares"])
        into["psi"] = _add(into["psi"], sketch["psi_counts"])
        into["ks"] = _add(into["ks"], sketch["ks_counts"])
    for sketch in report["categorical"]:
        into = merged["categorical"].setdefault(sketch["name"], {"counts": None, "missing": 0})
        into["counts"] = _add(into["counts"], sketch["counts"])
        into["missing"] += int(sketch["missing"])
    merged["decisions"] += int(report["decisions"])
    merged["positives"] += int(report["positives"])
    merged["detections"].extend(dict(d) for d in report["detections"])
    merged["detections"].sort(key=lambda d: (d["feature"], d["detector"], d["event_time"]))
    return merged


def _add(total: list[int] | None, counts: list[int]) -> list[int]:
    if total is None:
        return [int(c) for c in counts]
    if len(total) != len(counts):  # a report from another reference layout: keep ours
        return total
    return [a + int(b) for a, b in zip(total, counts, strict=True)]
