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
seen); the partition's watermark is the smallest of them minus ``allowed_lateness``. Every
contribution to a metric carries an event time and is applied only when the watermark
passes the report boundary after it; what a partition applied at a boundary is its
partial, and the merge stage (:mod:`~services.performance.merge`) reports a boundary, at
multiples of ``report_interval``, once every partition passed it: so the report sequence
is a function of the input streams, not of how the consumer interleaved them or how many
instances share the partitions, and a killed and restarted instance emits the same
reports.

State (four stores, all bytes with explicit ``struct`` layouts, committed with offsets):
``join`` holds one packed entry per event_id (key: 16-byte BLAKE2b digest); ``metrics``
holds the joined samples of the sliding window, pending corrections, per-interval counters
and cumulative counters; ``meta`` holds watermarks and the model and segment-value tables;
``merge`` the merge stage's state (:mod:`~services.performance.merge`). An in-memory
expiry index (time bucket -> digests) is derived from ``join`` and rebuilt whenever the
store and the index disagree (restore, aborted batch).
Why each rule is what it is: docs/decisions/performance-*.md.

Where each part lives: the byte layouts in :mod:`~services.performance.state_layout`, a
partition's decoded state in :mod:`~services.performance.partitions`, model-route and
segment ids in :mod:`~services.performance.catalog`, the join in
:mod:`~services.performance.join` (its dead letters in
:mod:`~services.performance.dead_letters`), expiry and release at a boundary in
:mod:`~services.performance.expiry`, the reports in :mod:`~services.performance.reports`
(sliding windows in :mod:`~services.performance.window`), the partials and their merge in
:mod:`~services.performance.merge`.
This module composes them: records go to the join (:meth:`PerformanceProcessor._add_prediction`,
:meth:`PerformanceProcessor._add_label`), each boundary a partition's watermark passes is
expired and released into a partial (:meth:`PerformanceProcessor._advance`), and partials
go to the partials topic or, in one process, straight to the merge stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from services.performance.alerts import SloMonitor
from services.performance.calibrations import estimator_from_settings
from services.performance.catalog import Catalog
from services.performance.dead_letters import WaitingLabelDeadLetters
from services.performance.estimation import Estimator
from services.performance.expiry import BoundaryWork, Released
from services.performance.join import JoinParts, LabelJoin
from services.performance.merge import MERGE_STORE, PARTIAL_SCHEMA, MergeStage, build_partial
from services.performance.metrics import PerformanceMetrics, default_metrics
from services.performance.partitions import EventTimeRules, PartitionStores, PartitionView
from services.performance.quality import NO_TIME
from services.performance.reports import ReportBuilder
from services.performance.settings import PerformanceSettings
from services.performance.state_layout import (
    JOIN_STORE,
    META_STORE,
    METRICS_STORE,
    PARTIALS_KEY,
    StateLayout,
    event_digest,
)
from streamml.errors import StreamMLError
from streamml.processor import Output, Processor, Record, Result
from streamml.state import State

__all__ = [
    "JOIN_STORE",
    "MERGE_STORE",
    "META_STORE",
    "METRICS_STORE",
    "PerformanceProcessor",
    "event_digest",
]

log = logging.getLogger(__name__)


class PerformanceProcessor(Processor):
    """Joins labels to predictions and emits PerformanceReport and SloAlert records."""

    stores = (JOIN_STORE, METRICS_STORE, META_STORE, MERGE_STORE)

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
        partials_topic: str | None = None,
        source_partitions: int = 0,
    ) -> None:
        """``partials_topic`` None: one process, the merge stage runs on the partials of
        the partitions it owns in the same batch (tests, ``recompute``); otherwise partials
        go to that topic and the merge stage waits for ``source_partitions`` partitions."""
        if partials_topic is not None and source_partitions < 1:
            raise StreamMLError("performance: source_partitions must be >= 1 with a partials topic")
        self.settings = settings
        self._partials_topic = partials_topic
        self._source_partitions = source_partitions
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
        monitor = SloMonitor(
            slo_min=settings.slo_min,
            slo_max=settings.slo_max,
            consecutive=settings.slo_consecutive_windows,
            min_labeled=settings.slo_min_labeled,
            canary_metrics=settings.canary_metrics,
            canary_margin=settings.canary_margin,
            estimate_min=None if estimator is None else settings.estimate_slo_min,
        )
        self._merge = MergeStage(
            fields=fields,
            rules=rules,
            reports=ReportBuilder(settings, interval=rules.report_interval),
            monitor=monitor,
            metrics=self._metrics,
            report_topic=report_topic,
            alert_topic=alert_topic,
            estimator=None if estimator is None else estimator.merging(),
            dead_letters=dead_letters,
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
        source_partitions: int | None = None,
    ) -> PerformanceProcessor:
        """The processor with the physical topic names the settings give; with
        ``source_partitions`` (the service), partials go through the partials topic."""
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
            partials_topic=(
                None if source_partitions is None else kafka.topic(settings.partials_topic)
            ),
            source_partitions=source_partitions or 0,
        )

    def input_schemas(self) -> dict[str, str]:
        """Physical input topic -> reader schema, for the runtime."""
        inputs = dict.fromkeys(self._prediction_topics, "Prediction")
        inputs.update(dict.fromkeys(self._label_topics, "Label"))
        if self._partials_topic is not None:
            inputs[self._partials_topic] = PARTIAL_SCHEMA
        return inputs

    # -- the runtime's hooks --------------------------------------------------------

    def on_assigned(self, partitions: Sequence[tuple[str, int]], state: State) -> None:
        self._bind(state)
        for topic, number in partitions:
            if topic == self._partials_topic:
                continue
            self._owned.add(number)
            self._views.pop(number, None)  # restored from the changelog: rebuild on first use
        self._merge.forget()
        self._merge.restored(state)

    def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        for topic, number in partitions:
            if topic == self._partials_topic:
                continue
            self._owned.discard(number)
            self._views.pop(number, None)
        self._merge.forget()

    def process(self, records: Sequence[Record], state: State) -> Result:
        self._bind(state)
        result = Result()
        touched: dict[int, PartitionView] = {}
        partials: list[Any] = []
        for record in records:
            if record.topic == self._partials_topic:
                partials.append(record.value)
                continue
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
        made = self._advance(touched, result)
        if self._partials_topic is None:
            partials += made  # one process: merged at once, over the partitions it owns
            sources: Sequence[int] = sorted(self._owned)
        else:
            sources = range(self._source_partitions)
            for partial in made:
                result.outputs.append(
                    Output(topic=self._partials_topic, schema=PARTIAL_SCHEMA, value=partial,
                           key=str(partial["source_partition"]).encode(), partition=0)
                )  # fmt: skip
        if partials:
            self._merge.ingest(partials, sources, state, result)
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

    def _touch(self, partition: int) -> PartitionView:
        """The partition's view, in step with its stores; its sequence number moves on."""
        stored_seq = self._stores.stored_seq(partition)
        view = self._views.get(partition)
        if view is None or view.seq != stored_seq:
            if view is not None:
                log.info("partition %d: state moved back (aborted batch); rebuilding", partition)
            view = self._views[partition] = self._stores.load(partition)
        view.seq += 1
        return view

    # -- event time moves on ----------------------------------------------------------

    def _advance(self, touched: dict[int, PartitionView], result: Result) -> list[dict[str, Any]]:
        """Per partition: expire and release every boundary its own watermark passed; the
        partials of those boundaries, for the merge stage (docs/decisions/
        performance-scale-out.md: the merge reports a boundary once every partition passed
        it, which is when the minimum watermark passes it)."""
        interval = self._rules.report_interval
        partitions = self._source_partitions or len(self._owned)
        count_window = self._rules.window_size if self._rules.count_window else None
        partials: list[dict[str, Any]] = []
        for p in sorted(touched):
            v = touched[p]
            watermark = v.watermark(self._required, self._rules.allowed_lateness)
            if watermark == NO_TIME:
                continue  # some stream of the partition has not started: no progress
            if v.boundary == NO_TIME:
                if v.min_ts == NO_TIME:
                    continue
                v.boundary = ((v.min_ts - 1) // interval) * interval
            last_k = v.boundary // interval
            # A boundary is passed only once the watermark is strictly beyond it: then every
            # record at or before it has been read on every stream (streams are in time
            # order within allowed_lateness), whatever batches the consumer happened to form.
            to_k = (watermark - 1) // interval
            for k in range(last_k + 1, to_k + 1):
                end = k * interval
                released = Released()
                dirty, v.dirty_cumulative = v.dirty_cumulative, set()
                self._boundary.expire(v, k, end, result.outputs)
                self._boundary.release(v, end, released)
                v.boundary = end
                changed = v.dirty_cumulative
                if self._stores.meta.get(p, PARTIALS_KEY) is None:
                    changed = set(v.cumulative)  # the first partial: everything so far
                    self._stores.meta.put(p, PARTIALS_KEY, b"1")
                v.dirty_cumulative |= dirty
                estimates = {}
                if self._estimator is not None:
                    estimates = self._estimator.take_interval(v, self._stores.metrics, k)
                partial = build_partial(v, k, released, estimates, changed,
                                        partitions=partitions, interval=interval,
                                        count_window=count_window)  # fmt: skip
                partials.append(partial)
                self._boundary.forget_sent(v, end)
        return partials
