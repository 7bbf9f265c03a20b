"""The drift service's pure core: features + predictions in, DriftAlert episodes out.

Two stages in one processor (see docs/decisions/drift-aggregation.md):

1. **Per partition** (``features``/``predictions`` partition ``p``): a
   :class:`~services.drift.monitor.StreamMonitor` per stream counts the open event-time
   window against the reference bins and runs ADWIN and Page-Hinkley per value; each
   closed window becomes a ``DriftWindowReport`` on the 1-partition internal topic
   (``drift.windows``), and each streaming detector firing is sent at once as a
   ``kind="detection"`` report.
2. **Whole stream** (``drift.windows`` partition 0): the
   :class:`~services.drift.episodes.EpisodeTracker` merges the reports of all
   partitions per window, runs the window tests once and opens/updates/resolves alert
   episodes, written as ``DriftAlert`` to ``drift.alerts``; a detection report opens
   (or feeds) its episode without waiting for its window.

State (store ``monitor`` per input partition, store ``episodes`` on partition 0) is
written once per micro-batch per touched partition as signed JSON, so it commits with
the offsets and a restart continues exactly where the last committed batch ended.
Replayed records (``replay.*``/``redrive.*`` headers) are counted in windows of their own
event time, apart from the live windows, each original once (:mod:`services.drift.replay`);
``replayed="skip"`` skips them, ``"current_window"`` counts them like live records.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from services.drift.detectors import RIVER_VERSION, DetectorParams
from services.drift.episodes import EpisodeTracker, WindowOutcome, WindowTestParams
from services.drift.metrics import DriftMetrics, default_metrics
from services.drift.monitor import FEATURES, PREDICTIONS, WINDOW, Rows, StreamMonitor
from services.drift.reference import Reference
from services.drift.replay import ReplayWindows
from services.drift.statecodec import StateCodec, StateIntegrityError
from streamml.deadletter import replay_origin
from streamml.logs import fields
from streamml.processor import Output, Processor, Record, Rejection, Result
from streamml.state import State

log = logging.getLogger(__name__)

MONITOR_STORE = "monitor"
EPISODE_STORE = "episodes"
_TRACKER_KEY = b"tracker"
_LAYOUT = 1

ReplayMode = Literal["own_windows", "skip", "current_window"]
REPLAY_MODES: tuple[ReplayMode, ...] = ("own_windows", "skip", "current_window")

WINDOW_REPORT_SCHEMA = "DriftWindowReport"
ALERT_SCHEMA = "DriftAlert"


class DriftProcessor(Processor):
    """Drift detection against a model's training reference, as a pure processor."""

    stores = (MONITOR_STORE, EPISODE_STORE)

    def __init__(
        self,
        *,
        reference: Reference,
        features_topic: str,
        predictions_topic: str | None,
        windows_topic: str,
        alerts_topic: str,
        state_key: bytes,
        source_partitions: int = 1,
        window_ms: int = 60_000,
        detectors: DetectorParams | None = None,
        feature_detectors: Mapping[str, DetectorParams] | None = None,
        tests: WindowTestParams | None = None,
        replayed: ReplayMode = "own_windows",
        predictions_route: str | None = None,
        monitor_from_ms: int = 0,
        max_window_jump: int = 60,
        jump_confirm_records: int = 20,
        max_replay_windows: int = 120,
        metrics: DriftMetrics | None = None,
    ) -> None:
        if source_partitions < 1:
            raise ValueError("source_partitions must be >= 1")
        self.reference = reference
        self.features_topic = features_topic
        self.predictions_topic = predictions_topic
        self.windows_topic = windows_topic
        self.alerts_topic = alerts_topic
        self.source_partitions = source_partitions
        self.window_ms = window_ms
        self.detectors = detectors or DetectorParams()
        self.feature_detectors = dict(feature_detectors or {})
        self.tests = tests or WindowTestParams()
        if replayed not in REPLAY_MODES:
            raise ValueError(f"replayed must be one of {', '.join(REPLAY_MODES)}")
        self.replayed = replayed
        self.predictions_route = predictions_route
        self.monitor_from_ms = monitor_from_ms
        self.max_window_jump = max_window_jump
        self.max_replay_windows = max_replay_windows
        self.jump_confirm_records = jump_confirm_records
        self.metrics = metrics or default_metrics()
        self._codec = StateCodec(state_key)
        self._input_index = {name: i for i, name in enumerate(reference.input_names)}
        self._names_list = list(reference.input_names)
        self._monitored_index = [self._input_index[n] for n in reference.feature_names]
        self._params_fingerprint = _fingerprint(self.detectors, self.feature_detectors)
        # Decoded state per (store key, partition), valid only while the store still holds
        # exactly the bytes we wrote: an aborted transaction or a rolled-back savepoint
        # brings older bytes back, and then the state is decoded again from the store.
        self._cache: dict[tuple[bytes, int], tuple[bytes, Any]] = {}

    # -- Processor -----------------------------------------------------------------

    def process(self, records: Sequence[Record], state: State) -> Result:
        result = Result()
        groups: dict[tuple[str, int], list[Record]] = {}
        reports: list[Record] = []
        for record in records:
            if record.topic == self.windows_topic:
                reports.append(record)
            else:
                groups.setdefault((record.topic, record.partition), []).append(record)
        for (topic, partition), read in groups.items():
            group = self._from_monitor_start(topic, read)
            if not group:
                continue
            if topic == self.features_topic:
                self._monitor_features(partition, group, state, result)
            elif topic == self.predictions_topic:
                self._monitor_predictions(partition, group, state, result)
            else:
                for record in group:
                    result.rejections.append(
                        Rejection(record, "validation.topic", f"unexpected topic {topic}")
                    )
        if reports:
            self._track(reports, state, result)
        return result

    def _from_monitor_start(self, topic: str, group: list[Record]) -> list[Record]:
        """The records at or after ``monitor_from_ms`` (all, when it is 0)."""
        cut = self.monitor_from_ms
        if not cut or topic not in (self.features_topic, self.predictions_topic):
            return group
        kept = [r for r in group if not _event_time_before(r, cut)]
        if len(kept) < len(group):
            stream = FEATURES if topic == self.features_topic else PREDICTIONS
            self.metrics.records.labels(stream, "before_monitor_from").inc(len(group) - len(kept))
        return kept

    def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        gone = {p for _, p in partitions}
        for key in [k for k in self._cache if k[1] in gone]:
            del self._cache[key]

    # -- stage 1 -------------------------------------------------------------------

    def _monitor_features(
        self, partition: int, group: list[Record], state: State, result: Result
    ) -> None:
        ref = self.reference
        width = len(self._monitored_index)
        times: list[int] = []
        offsets: list[int] = []
        rows: list[list[float]] = []
        cats: list[list[int]] = []
        cat_refs = list(ref.categorical.values())
        replay = _ReplaySplit(self, FEATURES, partition, state)
        for record in group:
            if not replay.admit(record):
                continue
            value = record.value
            values = value["values"]
            names = value["names"]
            if names:
                if len(names) != len(values):
                    result.rejections.append(Rejection(
                        record, "validation.shape",
                        f"{len(names)} names but {len(values)} values"))  # fmt: skip
                    continue
                if names == self._names_list:
                    full = values
                else:
                    lookup = dict(zip(names, values, strict=True))
                    full = [lookup.get(n, math.nan) for n in self._names_list]
            elif len(values) == len(self._names_list):
                full = values
            else:
                result.rejections.append(Rejection(
                    record, "validation.shape",
                    f"{len(values)} unnamed values but the reference model has "
                    f"{len(self._names_list)} inputs"))  # fmt: skip
                continue
            rows.append([full[i] for i in self._monitored_index])
            categories = value["categories"]
            cats.append([_bucket(c, categories.get(c.name)) for c in cat_refs])
            times.append(int(value["event_time"]))
            offsets.append(record.offset)
            replay.keep(record)
        batch = Rows(
            event_time=np.asarray(times, dtype=np.int64),
            offset=np.asarray(offsets, dtype=np.int64),
            values=np.asarray(rows, dtype=np.float64).reshape(len(rows), width),
            categories=np.asarray(cats, dtype=np.int64).reshape(len(rows), len(cat_refs)),
        )
        self._observe(FEATURES, partition, batch, replay, state=state, result=result)

    def _monitor_predictions(
        self, partition: int, group: list[Record], state: State, result: Result
    ) -> None:
        ref = self.reference
        route = self.predictions_route
        # Following a route: its model whatever the version (a promotion is compared too).
        version = ref.model_version if route is None else None
        times: list[int] = []
        offsets: list[int] = []
        scores: list[float] = []
        decisions: list[int] = []
        other = 0
        replay = _ReplaySplit(self, PREDICTIONS, partition, state)
        for record in group:
            if not replay.admit(record):
                continue
            value = record.value
            if (route is not None and value["route"] != route) or (
                ref.model_name is not None
                and (
                    value["model_name"] != ref.model_name
                    or (version is not None and value["model_version"] != version)
                )
            ):
                other += 1  # another model (fallback, rules, canary): not this reference
                continue
            score = float(value["score"])
            scores.append(score if math.isfinite(score) and 0.0 <= score <= 1.0 else math.nan)
            decisions.append(1 if value["decision"] else 0)
            times.append(int(value["event_time"]))
            offsets.append(record.offset)
            replay.keep(record)
        if other:
            self.metrics.records.labels(PREDICTIONS, "other_model").inc(other)
        batch = Rows(
            event_time=np.asarray(times, dtype=np.int64),
            offset=np.asarray(offsets, dtype=np.int64),
            values=np.asarray(scores, dtype=np.float64).reshape(-1, 1),
            categories=np.zeros((len(scores), 0), dtype=np.int64),
            decisions=np.asarray(decisions, dtype=np.int64),
        )
        self._observe(PREDICTIONS, partition, batch, replay, state=state, result=result)

    def _observe(
        self,
        stream: str,
        partition: int,
        batch: Rows,
        replay: _ReplaySplit,
        *,
        state: State,
        result: Result,
    ) -> None:
        live, replayed = replay.split(batch)
        if replay.skipped:
            self.metrics.records.labels(stream, "replay_skipped").inc(replay.skipped)
        if replay.duplicates:
            self.metrics.records.labels(stream, "replay_duplicate").inc(replay.duplicates)
        if len(replayed):
            self.metrics.records.labels(stream, "replayed").inc(len(replayed))
        if not len(live) and replay.windows is None:
            return
        monitor = self._load_monitor(stream, partition, state)
        reports: list[dict[str, Any]] = []
        fingerprint = self.reference.fingerprint
        if len(live):
            self.metrics.records.labels(stream, "monitored").inc(len(live))
            reports = monitor.observe(live, self.source_partitions, fingerprint)
        windows = replay.windows
        if windows is not None:
            sent = windows.observe(replayed, monitor.window, self.source_partitions, fingerprint)
            sent += windows.tick(monitor.window, self.source_partitions, fingerprint)
            reports += sent
            if len(replayed) or sent:
                self.metrics.replay_windows_sent.inc(len(sent))
                self._save_replay(stream, partition, windows, state)
            else:  # unchanged: keep it decoded for the next batch
                key = f"{stream}/replay".encode()
                raw = state.store(MONITOR_STORE).get(partition, key)
                if raw is not None:
                    self._cache[(key, partition)] = (raw, windows)
        for report in reports:
            if report["kind"] == WINDOW:  # a detection report's firing is in its window's too
                for hit in report["detections"]:
                    self.metrics.detections.labels(hit["feature"], hit["detector"]).inc(
                        hit["count"]
                    )
            result.outputs.append(Output(
                topic=self.windows_topic, schema=WINDOW_REPORT_SCHEMA, value=report,
                key=f"{stream}/{partition}", partition=0))  # fmt: skip
        store = state.store(MONITOR_STORE)
        if not len(live):  # unchanged: keep the decoded monitor for the next batch
            raw = store.get(partition, stream.encode())
            if raw is not None:
                self._cache[(stream.encode(), partition)] = (raw, monitor)
            return
        document = {
            "layout": _LAYOUT,
            "reference": self.reference.fingerprint,
            "river": RIVER_VERSION,
            "params": self._params_fingerprint,
            "monitor": monitor.to_dict(),
        }
        self._save(store, stream.encode(), partition, document, monitor)

    def _new_replay(self, stream: str, partition: int) -> ReplayWindows:
        monitor = self._new_monitor(stream, partition)
        return ReplayWindows(stream=stream, partition=partition, window_ms=self.window_ms,
                             numeric=monitor.numeric, categorical=monitor.categorical,
                             max_windows=self.max_replay_windows)  # fmt: skip

    def _stored(
        self, key: bytes, partition: int, state: State, what: str, stream: str
    ) -> tuple[Any, dict[str, Any] | None]:
        """The cached object still matching the store, or else the stored document of this
        layout and reference (None for neither: start afresh)."""
        raw = state.store(MONITOR_STORE).get(partition, key)
        cached = self._cache.pop((key, partition), None)
        if cached is not None and raw is not None and (cached[0] is raw or cached[0] == raw):
            return cached[1], None
        if raw is None:
            return None, None
        document = self._decode(raw, f"{what} {stream}/{partition}")
        if document is None:
            return None, None
        if document.get("layout") != _LAYOUT or document.get("reference") != (
            self.reference.fingerprint
        ):
            log.warning(f"{what} state was for another reference; starting afresh",
                        extra=fields(stream=stream, partition=partition))  # fmt: skip
            self.metrics.state_resets.labels("reference").inc()
            return None, None
        return None, document

    def _load_replay(self, stream: str, partition: int, state: State) -> ReplayWindows:
        cached, document = self._stored(
            f"{stream}/replay".encode(), partition, state, "replay", stream
        )
        if cached is not None:
            windows: ReplayWindows = cached
            return windows
        windows = self._new_replay(stream, partition)
        if document is not None:
            windows.load(document["replay"])
        return windows

    def _save_replay(
        self, stream: str, partition: int, windows: ReplayWindows, state: State
    ) -> None:
        document = {
            "layout": _LAYOUT,
            "reference": self.reference.fingerprint,
            "replay": windows.to_dict(),
        }
        key = f"{stream}/replay".encode()
        self._save(state.store(MONITOR_STORE), key, partition, document, windows)

    def _new_monitor(self, stream: str, partition: int) -> StreamMonitor:
        ref = self.reference
        if stream == FEATURES:
            numeric = [ref.numeric[n] for n in ref.feature_names]
            categorical = list(ref.categorical.values())
        else:
            numeric = [ref.score] if ref.score is not None else []
            categorical = []
        return StreamMonitor(
            stream=stream,
            partition=partition,
            window_ms=self.window_ms,
            numeric=numeric,
            categorical=categorical,
            params=self.feature_detectors,
            default_params=self.detectors,
            max_window_jump=self.max_window_jump,
            jump_confirm=self.jump_confirm_records,
        )

    def _load_monitor(self, stream: str, partition: int, state: State) -> StreamMonitor:
        cached, document = self._stored(stream.encode(), partition, state, "monitor", stream)
        if cached is not None:
            monitor: StreamMonitor = cached
            return monitor
        monitor = self._new_monitor(stream, partition)
        if document is None:
            return monitor
        same_detectors = (
            document.get("river") == RIVER_VERSION
            and document.get("params") == self._params_fingerprint
        )
        if not same_detectors:
            log.warning("detector parameters or river version changed; detectors start "
                        "afresh (window counts kept)",
                        extra=fields(stream=stream, partition=partition))  # fmt: skip
            self.metrics.state_resets.labels("detectors").inc()
        monitor.load(document["monitor"], detectors=same_detectors)
        return monitor

    # -- stage 2 -------------------------------------------------------------------

    def _track(self, reports: list[Record], state: State, result: Result) -> None:
        by_partition: dict[int, list[Record]] = {}
        for record in reports:
            by_partition.setdefault(record.partition, []).append(record)
        for partition, group in by_partition.items():
            tracker = self._load_tracker(partition, state)
            outcome = WindowOutcome()
            for record in group:
                tracker.ingest(record.value, outcome)
            for feature, test, value in outcome.statistics:
                self.metrics.statistic.labels(feature, test).set(value)
            for stream, source, lag in outcome.partition_lag:
                self.metrics.partition_lag.labels(stream, str(source)).set(lag)
            for alert in outcome.alerts:
                self.metrics.alerts.labels(alert["feature"], alert["state"],
                                           alert["severity"]).inc()  # fmt: skip
                log.info("drift alert", extra=fields(
                    alert_id=alert["alert_id"], state=alert["state"], feature=alert["feature"],
                    detector=alert["detector"], statistic=alert["statistic"],
                    severity=alert["severity"]))  # fmt: skip
                result.outputs.append(Output(topic=self.alerts_topic, schema=ALERT_SCHEMA,
                                             value=alert, key=alert["alert_id"]))  # fmt: skip
            self.metrics.open_episodes.set(len(tracker.episodes))
            self.metrics.windows_closed.inc(outcome.closed_windows)
            self.metrics.replay_windows_tested.inc(outcome.replay_windows)
            for stream, window, records in outcome.carried_windows:
                self.metrics.windows_carried.labels(stream).inc()
                log.info("drift window not tested alone: too few records, carried into the next",
                         extra={"stream": stream, "window_index": window, "records": records,
                                "min_window_records": self.tests.min_window_records})  # fmt: skip
            self.metrics.late_reports.inc(outcome.late_reports)
            self.metrics.warming_signals.inc(outcome.warming_signals)
            if outcome.foreign_reports:
                self.metrics.state_resets.labels("foreign_report").inc(outcome.foreign_reports)
            document = {
                "layout": _LAYOUT,
                "reference": self.reference.fingerprint,
                "tracker": tracker.to_dict(),
            }
            self._save(state.store(EPISODE_STORE), _TRACKER_KEY, partition, document, tracker)

    def _load_tracker(self, partition: int, state: State) -> EpisodeTracker:
        raw = state.store(EPISODE_STORE).get(partition, _TRACKER_KEY)
        cached = self._cache.pop((_TRACKER_KEY, partition), None)
        if cached is not None and raw is not None and (cached[0] is raw or cached[0] == raw):
            tracker: EpisodeTracker = cached[1]
            return tracker
        tracker = EpisodeTracker(self.reference, self.tests)
        if raw is None:
            return tracker
        document = self._decode(raw, f"episodes/{partition}")
        if document is None:
            return tracker
        if document.get("layout") != _LAYOUT or document.get("reference") != (
            self.reference.fingerprint
        ):
            log.warning("episode state was for another reference; open episodes are dropped")
            self.metrics.state_resets.labels("reference").inc()
            return tracker
        tracker.load(document["tracker"])
        return tracker

    # -- state bytes ---------------------------------------------------------------

    def _decode(self, raw: bytes, what: str) -> dict[str, Any] | None:
        try:
            document = self._codec.loads(raw)
        except StateIntegrityError as exc:
            log.error("drift state rejected; starting it afresh",
                      extra=fields(what=what, error=exc))  # fmt: skip
            self.metrics.state_resets.labels("signature").inc()
            return None
        if not isinstance(document, dict):
            self.metrics.state_resets.labels("signature").inc()
            return None
        return document

    def _save(
        self, store: Any, key: bytes, partition: int, document: dict[str, Any], value: Any
    ) -> None:
        raw = self._codec.dumps(document)
        store.put(partition, key, raw)
        self._cache[(key, partition)] = (raw, value)


def _bucket(reference: Any, value: str | None) -> int:
    if value is None or value == "":
        return -1
    return int(reference.bucket(value))


def _fingerprint(default: DetectorParams, overrides: Mapping[str, DetectorParams]) -> str:
    parts = [default.fingerprint()] + [
        f"{k}={v.fingerprint()}" for k, v in sorted(overrides.items())
    ]
    return "|".join(parts)


class _ReplaySplit:
    """Which records of one partition's batch are live and which are replayed (and counted
    in windows of their own event time), by the processor's ``replayed`` mode."""

    def __init__(self, processor: DriftProcessor, stream: str, partition: int, state: State):
        self.processor = processor
        self.stream = stream
        self.partition = partition
        self.state = state
        self.skipped = 0
        self.duplicates = 0
        self.windows: ReplayWindows | None = None
        self.flags: list[bool] = []
        self.origins: list[tuple[str, int, int] | None] = []

    def admit(self, record: Record) -> bool:
        """False for a replayed record that is not counted (skip mode, or a copy of a
        record of this very topic, which the service monitored when it read it)."""
        if not record.is_replay or self.processor.replayed == "current_window":
            return True
        if self.processor.replayed == "skip":
            self.skipped += 1
            return False
        origin = replay_origin(record.headers)
        if origin is not None and origin[0] == record.topic:
            self.duplicates += 1
            return False
        return True

    def keep(self, record: Record) -> None:
        """``record`` became the next row of the batch."""
        replayed = record.is_replay and self.processor.replayed == "own_windows"
        self.flags.append(replayed)
        self.origins.append(replay_origin(record.headers) if replayed else None)

    def split(self, batch: Rows) -> tuple[Rows, Rows]:
        """(live rows, replayed rows counted for the first time)."""
        if self.windows is None:
            stored = self.state.store(MONITOR_STORE).get(
                self.partition, f"{self.stream}/replay".encode()
            )
            if stored is not None or any(self.flags):
                self.windows = self.processor._load_replay(self.stream, self.partition,
                                                           self.state)  # fmt: skip
        if not any(self.flags):
            return batch, _take(batch, np.zeros(0, dtype=np.int64))
        assert self.windows is not None
        flags = np.asarray(self.flags, dtype=bool)
        first = np.zeros(len(flags), dtype=bool)
        for i in np.flatnonzero(flags).tolist():
            if self.windows.first_time(self.origins[i]):
                first[i] = True
            else:
                self.duplicates += 1
        return _take(batch, np.flatnonzero(~flags)), _take(batch, np.flatnonzero(first))


def _take(rows: Rows, index: Any) -> Rows:
    return Rows(rows.event_time[index], rows.offset[index], rows.values[index],
                rows.categories[index],
                None if rows.decisions is None else rows.decisions[index])  # fmt: skip


def _event_time_before(record: Record, cut: int) -> bool:
    """True when the record's event time is known and earlier than ``cut`` (a record
    without one is left to validation)."""
    value = record.value
    if not isinstance(value, Mapping):
        return False
    event_time = value.get("event_time")
    return isinstance(event_time, int) and event_time < cut
