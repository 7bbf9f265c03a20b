"""Reports over every partition, from per-partition partials (the two stages of N replicas).

**Stage 1** (each input partition, :func:`build_partial`): when a partition's own watermark
passes a report boundary, its expiry and release run as before and what they produced for
that boundary becomes a ``PerformancePartial``: the interval's counters per group, the
cumulative counters that changed, the samples released, the corrections applied and the
estimator's sums of the interval. In the service it goes to the 1-partition internal topic
``performance.partials``; without that topic (unit tests, ``recompute``) straight to stage 2.

**Stage 2** (:class:`MergeStage`, on the instance owning partition 0 of that topic) keeps,
per source partition, a *mirror*: a :class:`~services.performance.partitions.PartitionView`
holding exactly what the single-instance report needed of that partition (model routes,
segment names, interval counters, cumulative counters, the samples a window can reach,
the estimator's sums). Boundary ``k`` is reported when every source partition has sent its
partial for ``k`` or a later one (the minimum watermark passed ``k``: the condition one
instance over all partitions uses); then the partials up to ``k`` are applied to the mirrors
in partition order and :class:`~services.performance.reports.ReportBuilder` and
:class:`~services.performance.alerts.SloMonitor` run over the mirrors as they ran over the
partitions themselves, so the reports and alerts are the single instance's, value for value.

State (store ``merge``, all under partition 0): the mirrors in the per-partition layouts of
:mod:`~services.performance.state_layout` behind a key prefix per source partition, the
partials not yet reported, the last reported boundary and the alert state; committed with
the partials' offsets. docs/decisions/performance-scale-out.md says why.
"""

from __future__ import annotations

import io
import json
import logging
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cache
from typing import Any

import fastavro

from services.performance.alerts import AlertState, SloMonitor
from services.performance.catalog import Catalog
from services.performance.dead_letters import WaitingLabelDeadLetters
from services.performance.estimation import Estimator, ScoreSums
from services.performance.expiry import BoundaryWork, Released
from services.performance.join import JoinParts
from services.performance.metrics import PerformanceMetrics
from services.performance.partitions import EventTimeRules, PartitionStores, PartitionView
from services.performance.quality import NO_TIME, Cumulative
from services.performance.reports import EstimateFields, ReportBuilder, ShownName
from services.performance.state_layout import (
    MODEL_ID,
    MODEL_LEVEL,
    OTHER,
    OTHER_NAME,
    PROGRESS_KEY,
    SAMPLE_DIGEST,
    SAMPLE_MODEL,
    SAMPLE_PREFIX,
    Group,
    Sample,
    StateLayout,
    model_id_of,
    segment_key,
)
from streamml.codec import default_schemas_dir
from streamml.processor import Output, Result
from streamml.state import KeyValueStore, State

log = logging.getLogger(__name__)

MERGE_STORE = "merge"
PARTIAL_SCHEMA = "PerformancePartial"
HOME = 0  # the merge stage's state lives in this partition of its store

_SOURCE = struct.Struct(">H")
_K = struct.Struct(">q")
_METRICS = b"m"  # + source partition + a metrics-store key of the mirror
_META = b"n"  # + source partition + a meta-store key of the mirror
_PENDING = b"q"  # + source partition + boundary index: a partial not yet reported
_LAST = b"gK"  # the last reported boundary index
_SEQ = b"gS"  # moves on with every change, so an aborted batch is noticed
_ALERTS = b"gA"  # the SLO monitor's state (JSON)


# -- stage 1 --------------------------------------------------------------------------


def build_partial(
    view: PartitionView,
    k: int,
    released: Released,
    estimates: Mapping[Group, ScoreSums],
    changed: set[Group],
    *,
    partitions: int,
    interval: int,
    count_window: int | None = None,
) -> dict[str, Any]:
    """Partition ``view``'s contribution to boundary ``k`` (after its expiry and release);
    ``changed``: the groups whose cumulative counters the release touched (all of them in
    a partition's first partial, so state from before partials existed is carried over);
    ``count_window``: the window size of count windows (None: time windows)."""
    bucket = view.buckets.get(k, {})
    groups = []
    for group in sorted(set(bucket) | changed | set(estimates)):
        model_id, index, value_id = group
        counts = bucket.get(group, (0, 0, 0))
        cumulative = view.cumulative.get(group) if group in changed else None
        estimate = estimates.get(group)
        groups.append({
            "model": model_id,
            "segment_field": index,
            "segment_value": "" if index == MODEL_LEVEL else view.segment_name(index, value_id),
            "predictions": counts[0], "expired": counts[1], "corrections": counts[2],
            "cumulative": None if cumulative is None else cumulative.pack(),
            "estimate": None if estimate is None else estimate.pack(),
        })  # fmt: skip
    samples = []
    for fresh in released.samples.values():
        sent = fresh
        if count_window is not None and len(fresh) > count_window:
            # A count window holds the last `window_size` samples of the union; samples
            # of one partition older than its own last `window_size` can never be in it.
            order = sorted(range(len(fresh)), key=lambda i: (fresh[i][2].ts, fresh[i][1]))
            newest = set(order[-count_window:])
            sent = [item for i, item in enumerate(fresh) if i in newest]
        for _, key, s in sent:
            samples.append({
                "model": model_id_of(key), "digest": key[SAMPLE_DIGEST], "ts": s.ts,
                "score": s.score, "decision": s.decision, "label": s.label, "delay": s.delay,
                "segments": [view.segment_name(i, v) for i, v in enumerate(s.segments)],
            })  # fmt: skip
    corrections = [
        {"model": model_id_of(key), "digest": key[SAMPLE_DIGEST], "label": label}
        for key, label in released.corrections
    ]
    return {
        "source_partition": view.partition,
        "source_partitions": partitions,
        "boundary": k * interval,
        "report_interval_ms": interval,
        "models": [
            {"model_name": m[0], "model_version": m[1], "route": m[2], "threshold": float(m[3])}
            for m in view.models
        ],
        "groups": groups,
        "samples": samples,
        "corrections": corrections,
    }


# -- stage 2 --------------------------------------------------------------------------


class SourceStore(KeyValueStore):
    """One source partition's slice of the merge store, read and written as if it were
    that partition of a store of its own (keys behind a prefix, all in :data:`HOME`)."""

    def __init__(self, base: KeyValueStore, tag: bytes) -> None:
        super().__init__(f"{base.name}/{tag.decode()}")
        self._base_store = base
        self._tag = tag

    def _key(self, partition: int, key: bytes) -> bytes:
        return self._tag + _SOURCE.pack(partition) + key

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._base_store.get(HOME, self._key(partition, key))

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self._base_store.put(HOME, self._key(partition, key), value)

    def delete(self, partition: int, key: bytes) -> None:
        self._base_store.delete(HOME, self._key(partition, key))

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        prefix = self._tag + _SOURCE.pack(partition)
        for key, value in self._base_store.items(HOME):
            if key.startswith(prefix):
                yield key[len(prefix) :], value


@cache
def _partial_schema() -> Any:
    path = default_schemas_dir() / "performance_partial.avsc"
    return fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))


def _encode(partial: Mapping[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, _partial_schema(), dict(partial))
    return out.getvalue()


def _decode(raw: bytes) -> dict[str, Any]:
    value = fastavro.schemaless_reader(io.BytesIO(raw), _partial_schema(), None)
    assert isinstance(value, dict)
    return value


class _LazyIds(dict[int, int]):
    """A partial's model index -> the mirror's model id, interned on first use."""

    def __init__(self, intern: Callable[[int], int]) -> None:
        super().__init__()
        self._intern = intern

    def __missing__(self, index: int) -> int:
        model_id = self[index] = self._intern(index)
        return model_id


class MergeStage:
    """Stage 2: partials in, the reports and alerts of every boundary all partitions passed."""

    def __init__(
        self,
        *,
        fields: list[str],
        rules: EventTimeRules,
        reports: ReportBuilder,
        monitor: SloMonitor,
        metrics: PerformanceMetrics,
        report_topic: str,
        alert_topic: str,
        estimator: Estimator | None,
        dead_letters: WaitingLabelDeadLetters,
    ) -> None:
        self._fields = fields
        self._interval = rules.report_interval
        self._reports = reports
        self._monitor = monitor
        self._metrics = metrics
        self._report_topic = report_topic
        self._alert_topic = alert_topic
        self._estimator = estimator
        layout = StateLayout(segment_fields=len(fields), input_topics=0)
        self._layout = layout
        self._stores = PartitionStores(layout, rules, len(fields), 0)
        self._catalog = Catalog(self._stores, fields, track_values=1 << 30)
        parts = JoinParts(layout, rules, self._stores, self._catalog, dead_letters, metrics)
        self._work = BoundaryWork(parts)
        self._store: KeyValueStore | None = None
        self._seq = -1  # the stored sequence number the mirrors below were built at
        self._views: dict[int, PartitionView] = {}
        self._pending: dict[int, dict[int, dict[str, Any]]] = {}
        self._unsaved: set[tuple[int, int]] = set()  # pending partials of this batch
        self._last = NO_TIME

    def forget(self) -> None:
        """Drop what is in memory (the home partition moved, or state was reloaded)."""
        self._seq = -1

    def restored(self, state: State) -> None:
        """The state was just assigned: if it holds the home partition, show its last
        reported boundary on /metrics (until the next report, not 0 after a restart)."""
        store = state.store(MERGE_STORE)
        raw = store.get(HOME, _LAST) if HOME in store.partitions() else None
        if raw is not None:
            self._metrics.on_restored_boundary(_K.unpack(raw)[0] * self._interval)

    # -- what comes in ----------------------------------------------------------------

    def ingest(
        self, partials: Iterable[Mapping[str, Any]], sources: Sequence[int], state: State,
        result: Result,
    ) -> None:  # fmt: skip
        """Keep ``partials``; report each boundary that every partition of ``sources`` passed."""
        try:
            self._ingest(partials, sources, state, result)
        except Exception:
            self.forget()  # the mirrors may be half-changed: rebuild them from the store
            raise

    def _ingest(
        self, partials: Iterable[Mapping[str, Any]], sources: Sequence[int], state: State,
        result: Result,
    ) -> None:  # fmt: skip
        store = self._bind(state)
        for partial in partials:
            self._keep(store, partial)
        reported = False
        while True:
            k = self._next(sources)
            if k is None:
                break
            self._report(k, sources, result)
            reported = True
        for p, k in sorted(self._unsaved):  # still waiting for other partitions: keep them
            store.put(HOME, _PENDING + _SOURCE.pack(p) + _K.pack(k), _encode(self._pending[p][k]))
        self._unsaved.clear()
        if reported:
            for view in self._views.values():
                self._stores.flush(view)
                if self._estimator is not None:
                    self._estimator.flush(view, self._stores.metrics)
            store.put(HOME, _LAST, _K.pack(self._last))
        self._seq += 1
        store.put(HOME, _SEQ, _K.pack(self._seq))

    def _keep(self, store: KeyValueStore, partial: Mapping[str, Any]) -> None:
        p, boundary = int(partial["source_partition"]), int(partial["boundary"])
        if int(partial["report_interval_ms"]) != self._interval:
            log.warning("partial of another report_interval ignored",
                        extra={"source_partition": p,
                               "report_interval_ms": partial["report_interval_ms"]})  # fmt: skip
            self._metrics.on_event("partial_ignored")
            return
        k = boundary // self._interval
        view = self._views.get(p)
        applied = view.boundary // self._interval if view and view.boundary != NO_TIME else None
        pending = self._pending.setdefault(p, {})
        if (applied is not None and k <= applied) or k in pending:
            self._metrics.on_event("partial_duplicate")  # a replay: it changes nothing
            return
        pending[k] = dict(partial)
        self._unsaved.add((p, k))  # stored at the end of the batch unless reported by then

    def _progress(self, p: int) -> int | None:
        """The last boundary index partition ``p`` has passed, as far as its partials say:
        a partition sends one per boundary from its first on, so a gap is a partial still
        to come (they arrive in order from Kafka; a test feeds them shuffled)."""
        pending = self._pending.get(p, {})
        view = self._views.get(p)
        if view is not None and view.boundary != NO_TIME:
            k = view.boundary // self._interval
        elif pending:
            k = min(pending) - 1
        else:
            return None
        while k + 1 in pending:
            k += 1
        return k

    def _next(self, sources: Sequence[int]) -> int | None:
        """The next boundary index to report, once every source partition passed it."""
        progress = [self._progress(p) for p in sources]
        if not progress or None in progress:
            return None
        if self._last == NO_TIME:
            # The first boundary is the earliest any partition reported (as one instance
            # starts at the oldest record of all partitions).
            k = min(min(self._pending[p]) for p in sources if self._pending.get(p))
        else:
            k = self._last + 1
        return k if min(x for x in progress if x is not None) >= k else None

    # -- a boundary -------------------------------------------------------------------

    def _report(self, k: int, sources: Sequence[int], result: Result) -> None:
        end = k * self._interval
        released = Released()
        for p in sorted(sources):
            pending = self._pending.get(p, {})
            for due in sorted(x for x in pending if x <= k):
                if (p, due) in self._unsaved:
                    self._unsaved.discard((p, due))
                else:
                    self._store_of().delete(HOME, _PENDING + _SOURCE.pack(p) + _K.pack(due))
                self._apply(self._view(p), pending.pop(due), released)
        views = [self._views[p] for p in sorted(self._views)]
        for view in views:
            view.boundary = end
        alert_state = self._alerts()
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
        self._work.prune(views, end, built.window_starts)
        self._store_of().put(HOME, _ALERTS, json.dumps(alert_state, sort_keys=True).encode())
        self._last = k

    def _apply(self, view: PartitionView, partial: Mapping[str, Any], released: Released) -> None:
        """One source partition's partial into its mirror (as its release did there)."""
        k = int(partial["boundary"]) // self._interval
        # A model route joins the mirror with its first contribution (a prediction counted
        # in an interval up to this boundary), never because the partition read it ahead of
        # its watermark: so which routes a boundary reports is a function of the streams.
        routes: list[Mapping[str, Any]] = partial["models"]
        ids = _LazyIds(lambda i: self._catalog.model_id(view, routes[i]))
        for g in partial["groups"]:
            index = int(g["segment_field"])
            value_id = 0
            if index != MODEL_LEVEL:
                value_id = self._segment_id(view, index, g["segment_value"])
            group = (ids[g["model"]], index, value_id)
            counts = [int(g["predictions"]), int(g["expired"]), int(g["corrections"])]
            if any(counts):
                view.buckets.setdefault(k, {})[group] = counts
                view.dirty_buckets.add((k, group))
            if g["cumulative"] is not None:
                view.cumulative[group] = Cumulative.unpack(g["cumulative"])
                view.dirty_cumulative.add(group)
            if g["estimate"] is not None and self._estimator is not None:
                self._estimator.put_interval(view, self._stores.metrics, k, group,
                                             ScoreSums.unpack(g["estimate"]))  # fmt: skip
        metrics = self._stores.metrics
        by_time: dict[bytes, list[tuple[int, bytes]]] = {}
        for s in partial["samples"]:
            model_id = ids[s["model"]]
            key = bytes(s["digest"]) + MODEL_ID.pack(model_id)
            names = enumerate(s["segments"])
            segments = tuple(self._segment_id(view, i, name) for i, name in names)
            sample = Sample(int(s["ts"]), float(s["score"]), bool(s["decision"]), int(s["label"]),
                            int(s["delay"]), segments)  # fmt: skip
            view.samples[key] = sample
            metrics.put(view.partition, SAMPLE_PREFIX + key, self._layout.pack_sample(sample))
            model = view.model_route(model_id)
            released.samples.setdefault(model, []).append((view, key, sample))
            released.changed.add(model)
            by_time.setdefault(key[SAMPLE_MODEL], []).append((sample.ts, key))
        for model_key, items in by_time.items():
            # Pruning pops in (time, key) order; these are later than every earlier sample.
            view.released.setdefault(model_key, deque()).extend(sorted(items))
        for c in partial["corrections"]:
            model_id = ids[c["model"]]
            key = bytes(c["digest"]) + MODEL_ID.pack(model_id)
            model = view.model_route(model_id)
            released.changed.add(model)
            released.relabelled.add(model)
            fixed = view.samples.get(key)
            if fixed is not None:
                fixed.label = int(c["label"])
                metrics.put(view.partition, SAMPLE_PREFIX + key, self._layout.pack_sample(fixed))
        view.boundary = k * self._interval

    def _segment_id(self, view: PartitionView, index: int, name: str) -> int:
        if name == OTHER_NAME:
            return OTHER
        known = view.segment_ids[index]
        value_id = known.get(name)
        if value_id is None:
            value_id = known[name] = len(known) + 1
            view.segment_names[index][value_id] = name
            self._stores.meta.put(view.partition, segment_key(index, value_id), name.encode())
        return value_id

    def _estimates_at(
        self, views: Sequence[PartitionView], end: int
    ) -> Callable[[ShownName], EstimateFields] | None:
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

    # -- state ------------------------------------------------------------------------

    def _store_of(self) -> KeyValueStore:
        assert self._store is not None
        return self._store

    def _alerts(self) -> AlertState:
        raw = self._store_of().get(HOME, _ALERTS)
        state: AlertState = {} if raw is None else json.loads(raw)
        return state

    def _view(self, p: int) -> PartitionView:
        view = self._views.get(p)
        if view is None:
            view = self._views[p] = self._stores.load(p)
        return view

    def _bind(self, state: State) -> KeyValueStore:
        """The merge store, with the mirrors in memory in step with it."""
        store = state.store(MERGE_STORE)
        if HOME not in store.partitions():
            store.assign(HOME)  # run without the runtime (tests, recompute): state is local
        raw = store.get(HOME, _SEQ)
        seq = _K.unpack(raw)[0] if raw is not None else 0
        if store is self._store and seq == self._seq:
            return store
        # Another state, or the stored one moved back (aborted batch) or on: rebuild.
        self._store, self._seq = store, seq
        self._stores.use(KeyValueStore("unused"), SourceStore(store, _METRICS),
                         SourceStore(store, _META))  # fmt: skip
        self._reports.forget()
        self._views, self._pending, self._unsaved = {}, {}, set()
        raw = store.get(HOME, _LAST)
        self._last = _K.unpack(raw)[0] if raw is not None else NO_TIME
        for key, value in store.items(HOME):
            tag = key[:1]
            if tag == _PENDING:
                p = _SOURCE.unpack_from(key, 1)[0]
                self._pending.setdefault(p, {})[_K.unpack_from(key, 3)[0]] = _decode(value)
            elif tag == _META and key[3:] == PROGRESS_KEY:
                p = _SOURCE.unpack_from(key, 1)[0]
                self._views[p] = self._stores.load(p)
        return store
