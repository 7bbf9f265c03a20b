"""The performance service's pure core: join late labels to predictions, report live quality.

Inputs (co-partitioned by entity_id, partition ``p`` of every topic on one instance):
``predictions`` and ``predictions.shadow`` (Prediction) and ``labels`` (Label). The join is
by event_id, in either order:

- a prediction waits for its label until ``event_time + label_horizon``; then it counts as
  unlabeled (label coverage) and is remembered as a 16-byte tombstone for
  ``late_label_memory``, so a label arriving in that time is rejected as ``late``;
- a label that comes first waits ``early_label_grace`` past its ``labeled_at``; if no
  prediction comes it goes to ``labels.dlq`` as ``orphan``; a label whose
  ``labeled_at - event_time`` is over the horizon is rejected as ``late``;
- a second label with another value is a correction (metrics use the latest, it is
  counted); an identical label and a second prediction for the same event_id and route are
  duplicates and ignored. An entry keeps its label history, so a prediction that joins
  late replays the first label and each correction at their own event times.

Time is event time only. Each partition keeps a watermark per input stream (max event time
seen); the service watermark is the smallest of them minus ``allowed_lateness``. Every
contribution to a metric carries an event time and is applied only when the watermark
passes the report boundary after it, and reports are emitted at multiples of
``report_interval``: so the report sequence is a function of the input streams, not of how
the consumer interleaved them, and a killed and restarted instance emits the same reports.

State (three stores, all bytes with explicit ``struct`` layouts, committed with offsets):
``join`` holds one packed entry per event_id (key: 16-byte BLAKE2b digest); ``metrics``
holds the joined samples of the sliding window, pending corrections, per-interval counters
and cumulative counters; ``meta`` holds watermarks, the model and segment-value tables and
the alert state. An in-memory expiry index (time bucket -> digests) is derived from
``join`` and rebuilt whenever the store and the index disagree (restore, aborted batch).
Why each rule is what it is: docs/decisions/performance-*.md.

Where each part lives: the byte layouts in :mod:`~services.performance.state_layout`, a
partition's decoded state in :mod:`~services.performance.partitions`, model-route and
segment ids in :mod:`~services.performance.catalog`, the join in
:mod:`~services.performance.join` (its dead letters in
:mod:`~services.performance.dead_letters`), expiry and release at a boundary in
:mod:`~services.performance.expiry`, the reports in :mod:`~services.performance.reports`
(sliding windows in :mod:`~services.performance.window`).
This module composes them: records go to the join (:meth:`PerformanceProcessor._add_prediction`,
:meth:`PerformanceProcessor._add_label`), and each boundary the watermark passes is expired,
released and reported (:meth:`PerformanceProcessor._emit_reports`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from services.performance.alerts import AlertState, SloMonitor
from services.performance.calibrations import estimator_from_settings
from services.performance.catalog import Catalog
from services.performance.dead_letters import WaitingLabelDeadLetters
from services.performance.estimation import Estimator
from services.performance.expiry import BoundaryWork, Released
from services.performance.join import JoinParts, LabelJoin
from services.performance.metrics import PerformanceMetrics, default_metrics
from services.performance.partitions import EventTimeRules, PartitionStores, PartitionView
from services.performance.quality import NO_TIME
from services.performance.reports import EstimateFields, ReportBuilder, ShownName
from services.performance.settings import PerformanceSettings
from services.performance.state_layout import (
    ALERTS_KEY,
    JOIN_STORE,
    META_STORE,
    METRICS_STORE,
    MODEL_LEVEL,
    Group,
    StateLayout,
    event_digest,
)
from streamml.errors import StreamMLError
from streamml.processor import Output, Processor, Record, Result
from streamml.state import State

__all__ = ["JOIN_STORE", "META_STORE", "METRICS_STORE", "PerformanceProcessor", "event_digest"]

log = logging.getLogger(__name__)


class PerformanceProcessor(Processor):
    """Joins labels to predictions and emits PerformanceReport and SloAlert records."""

    stores = (JOIN_STORE, METRICS_STORE, META_STORE)

    def __init__(
        self,
        settings: PerformanceSettings,
        *,
        prediction_topics: Iterable[str],
        label_topics: Iterable[str],
        optional_topics: Iterable[str] = (),
        report_topic: str,
        alert_topic: str,
        clock: Callable[[], float] = time.time,
        metrics: PerformanceMetrics | None = None,
        estimator: Estimator | None = None,
    ) -> None:
        self.settings = settings
        self._estimator = estimator  # CBPE estimates beside the realized metrics (or None)
        self._fields = list(settings.segment_fields)
        self._prediction_topics = frozenset(prediction_topics)
        self._label_topics = frozenset(label_topics)
        # Each input topic is a stream with its own watermark. An optional topic (the shadow
        # predictions, empty when no shadow model runs) holds the watermark back only once
        # it has delivered a record on that partition.
        self._topics = sorted(self._prediction_topics | self._label_topics)
        optional = frozenset(optional_topics)
        self._required = [topic not in optional for topic in self._topics]
        self._report_topic = report_topic
        self._alert_topic = alert_topic
        self._metrics = metrics or default_metrics()
        self._rules = rules = EventTimeRules.from_settings(settings)
        fields = list(settings.segment_fields)
        layout = StateLayout(segment_fields=len(fields), input_topics=len(self._topics))
        self._stores = PartitionStores(layout, rules, len(fields), len(self._topics))
        # Values tracked per field and partition (first seen); the reported ones are chosen
        # among them at each boundary, deterministically (see ReportBuilder.shown).
        catalog = Catalog(
            self._stores, fields, track_values=max(4 * settings.segment_max_values, 50)
        )
        dead_letters = WaitingLabelDeadLetters(clock=clock, metrics=self._metrics)
        parts = JoinParts(
            layout, rules, self._stores, catalog, dead_letters, self._metrics, estimator
        )
        self._join = LabelJoin(parts, streams={topic: i for i, topic in enumerate(self._topics)})
        self._boundary = BoundaryWork(parts)
        self._reports = ReportBuilder(settings, interval=rules.report_interval)
        self._monitor = SloMonitor(
            slo_min=settings.slo_min,
            slo_max=settings.slo_max,
            consecutive=settings.slo_consecutive_windows,
            min_labeled=settings.slo_min_labeled,
            canary_metrics=settings.canary_metrics,
            canary_margin=settings.canary_margin,
            estimate_min=None if estimator is None else settings.estimate_slo_min,
        )
        self._views: dict[int, PartitionView] = {}
        self._owned: set[int] = set()

    @classmethod
    def from_settings(
        cls,
        settings: PerformanceSettings,
        *,
        clock: Callable[[], float] = time.time,
        metrics: PerformanceMetrics | None = None,
    ) -> PerformanceProcessor:
        """The processor with the physical topic names the settings give."""
        kafka = settings.kafka
        shadow = [kafka.topic(settings.shadow_topic)] if settings.shadow_topic else []
        return cls(
            settings,
            prediction_topics=[kafka.topic(settings.predictions_topic), *shadow],
            label_topics=[kafka.topic(settings.labels_topic)],
            optional_topics=[] if settings.shadow_required else shadow,
            report_topic=kafka.topic(settings.report_topic),
            alert_topic=kafka.topic(settings.alerts_topic),
            clock=clock,
            metrics=metrics,
            estimator=estimator_from_settings(settings),
        )

    def input_schemas(self) -> dict[str, str]:
        """Physical input topic -> reader schema, for the runtime."""
        inputs = dict.fromkeys(self._prediction_topics, "Prediction")
        inputs.update(dict.fromkeys(self._label_topics, "Label"))
        return inputs

    # -- the runtime's hooks --------------------------------------------------------

    def on_assigned(self, partitions: Sequence[tuple[str, int]], state: State) -> None:
        self._bind(state)
        for _, number in partitions:
            self._owned.add(number)
            self._views.pop(number, None)  # restored from the changelog: rebuild on first use
        self._reports.forget()

    def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        for _, number in partitions:
            self._owned.discard(number)
            self._views.pop(number, None)
        self._reports.forget()

    def process(self, records: Sequence[Record], state: State) -> Result:
        self._bind(state)
        result = Result()
        touched: dict[int, PartitionView] = {}
        for record in records:
            view = touched.get(record.partition)
            if view is None:
                self._owned.add(record.partition)
                view = touched[record.partition] = self._touch(record.partition)
            if record.topic in self._label_topics:
                self._add_label(view, record, result)
            elif record.topic in self._prediction_topics:
                self._add_prediction(view, record, result)
            else:
                raise StreamMLError(f"performance: unexpected input topic {record.topic!r}")
        self._advance(touched, result)
        for view in touched.values():
            self._stores.flush(view)
            if self._estimator is not None:
                self._estimator.flush(view, self._stores.metrics)
            for topic, mark in zip(self._topics, view.marks, strict=True):
                if mark != NO_TIME:
                    self._metrics.on_watermark(view.partition, topic, mark)
        return result

    # -- records into the join --------------------------------------------------------

    def _add_prediction(self, view: PartitionView, record: Record, result: Result) -> None:
        """A prediction record joins the label join (hook: what else watches predictions)."""
        self._join.add_prediction(view, record, result)

    def _add_label(self, view: PartitionView, record: Record, result: Result) -> None:
        self._join.add_label(view, record, result)

    # -- views ------------------------------------------------------------------------

    def _bind(self, state: State) -> None:
        if self._stores.bind(state):
            self._views.clear()
            self._reports.forget()

    def _touch(self, partition: int) -> PartitionView:
        """The partition's view, in step with its stores; its sequence number moves on."""
        stored_seq = self._stores.stored_seq(partition)
        view = self._views.get(partition)
        if view is None or view.seq != stored_seq:
            if view is not None:
                log.info("partition %d: state moved back (aborted batch); rebuilding", partition)
            view = self._views[partition] = self._stores.load(partition)
            self._reports.forget()
        view.seq += 1
        return view

    # -- event time moves on ----------------------------------------------------------

    def _advance(self, touched: dict[int, PartitionView], result: Result) -> None:
        """Expire, release and report every boundary the watermark passed."""
        views = [touched.get(p) or self._touch_into(p, touched) for p in sorted(self._owned)]
        marks = [v.watermark(self._required, self._rules.allowed_lateness) for v in views]
        if not views or NO_TIME in marks:
            return  # some stream of some partition has not started: no event-time progress
        watermark = min(marks)
        interval = self._rules.report_interval
        boundaries = [v.boundary for v in views if v.boundary != NO_TIME]
        if boundaries:
            boundary = max(boundaries)
        else:
            first = min(v.min_ts for v in views if v.min_ts != NO_TIME)
            boundary = ((first - 1) // interval) * interval
        for v in views:
            v.boundary = boundary
        last_k = boundary // interval
        # A boundary is passed only once the watermark is strictly beyond it: then every
        # record at or before it has been read on every stream (streams are in time order
        # within allowed_lateness), whatever batches the consumer happened to form.
        to_k = (watermark - 1) // interval
        if to_k <= last_k:
            return
        alert_state = self._load_alerts(views)
        window_starts: list[int] = []
        for k in range(last_k + 1, to_k + 1):
            end = k * interval
            released = Released()
            for v in views:
                self._boundary.expire(v, k, end, result.outputs)
                self._boundary.release(v, end, released)
                v.boundary = end
            window_starts = self._emit_reports(views, end, released, alert_state, result)
        self._boundary.prune(views, to_k * interval, window_starts)
        encoded = json.dumps(alert_state, sort_keys=True).encode()
        for v in views:
            self._stores.meta.put(v.partition, ALERTS_KEY, encoded)

    def _emit_reports(
        self,
        views: Sequence[PartitionView],
        end: int,
        released: Released,
        alert_state: AlertState,
        result: Result,
    ) -> list[int]:
        """The reports and alerts of the boundary at ``end``; returns each model route's
        window start (what pruning must keep)."""
        built = self._reports.build(views, end, released, self._estimates_at(views, end))
        for report in built.reports:
            key = "/".join((report["model_name"], report["model_version"], report["route"]))
            result.outputs.append(
                Output(topic=self._report_topic, schema="PerformanceReport", value=report,
                       key=key.encode())
            )  # fmt: skip
            self._metrics.observe(report)
        for alert in self._monitor.evaluate(built.model_reports, alert_state):
            result.outputs.append(
                Output(topic=self._alert_topic, schema="SloAlert", value=alert,
                       key=alert["alert_id"].encode())
            )  # fmt: skip
        return built.window_starts

    def _estimates_at(
        self, views: Sequence[PartitionView], end: int
    ) -> Callable[[ShownName], EstimateFields] | None:
        """The estimator's fields for the boundary at ``end``, named as the reports name
        model routes and segment values (hook: what reports besides realized metrics)."""
        estimator = self._estimator
        if estimator is None:
            return None
        fields, store = self._fields, self._stores.metrics

        def at(shown: ShownName) -> EstimateFields:
            def name(view: PartitionView, group: Group) -> tuple[Any, ...]:
                model = view.model_route(group[0])
                if group[1] == MODEL_LEVEL:
                    return (*model, None, None)
                index = group[1]
                return (*model, fields[index], shown(index, view.segment_name(index, group[2])))

            return estimator.at_boundary(views, store, end, name)

        return at

    def _touch_into(self, partition: int, touched: dict[int, PartitionView]) -> PartitionView:
        view = touched[partition] = self._touch(partition)
        return view

    def _load_alerts(self, views: Sequence[PartitionView]) -> AlertState:
        for v in views:
            raw = self._stores.meta.get(v.partition, ALERTS_KEY)
            if raw is not None:
                state: AlertState = json.loads(raw)
                return state
        return {}
