"""N instances, one merge stage: the reports of partitions split over several processors and
merged through the partials topic equal one processor over every partition, report for
report; partials out of order or replayed change nothing; merged metrics are sklearn's on
the union of the joined records (docs/decisions/performance-scale-out.md).

The partials topic is a list here (each partial Avro-encoded and decoded as the broker would
carry it); the instances are processors with their own state, as separate processes have.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from services.performance.expiry import BoundaryWork
from services.performance.metrics import PerformanceMetrics
from services.performance.processor import PerformanceProcessor, event_digest
from streamml.codec import AvroCodec
from streamml.processor import Record, Result
from streamml.state import State

from .support import (
    ALERTS,
    LABELS,
    MIN,
    PREDICTIONS,
    REPORTS,
    SHADOW,
    T0,
    label,
    new_state,
    prediction,
    processor,
    settings,
)
from .test_determinism import interleave, streams

PARTIALS = "t.performance.partials"
PARTITIONS = (0, 1, 2, 3)
CODEC = AvroCodec()
CONFIG: dict[str, Any] = {
    "window_size": 100,
    "slo_min": {"roc_auc": 0.9, "recall": 0.8},
    "slo_consecutive_windows": 2,
    "slo_min_labeled": 20,
    "canary_margin": 0.0,
    "report_interval": timedelta(minutes=5),
}
Emitted = list[tuple[str, dict[str, Any]]]


def instance(metrics: PerformanceMetrics | None = None, **overrides: Any) -> PerformanceProcessor:
    """A processor as the service runs it: partials go to the partials topic."""
    return PerformanceProcessor(
        settings(**{**CONFIG, **overrides}),
        prediction_topics=[PREDICTIONS, SHADOW],
        label_topics=[LABELS],
        optional_topics=[SHADOW],
        report_topic=REPORTS,
        alert_topic=ALERTS,
        clock=lambda: 1.0,
        partials_topic=PARTIALS,
        source_partitions=len(PARTITIONS),
        metrics=metrics,
    )


def emitted(result: Result) -> Emitted:
    return [(o.topic, dict(o.value)) for o in result.outputs if o.topic in (REPORTS, ALERTS)]


def single(batches: Sequence[Sequence[Record]], **overrides: Any) -> Emitted:
    """One processor over every partition, merging in-process (as one instance did)."""
    proc = processor(**{**CONFIG, **overrides})
    state = new_state(PARTITIONS)
    proc.on_assigned([(PREDICTIONS, p) for p in PARTITIONS], state)
    out: Emitted = []
    for batch in batches:
        out += emitted(proc.process(list(batch), state))
        state.commit()
    return out


class Cluster:
    """Instances sharing the partitions; the partials topic as a list of records."""

    def __init__(self, owners: dict[int, str], seed: int, **overrides: Any) -> None:
        self.overrides = overrides
        self.rng = random.Random(seed)
        self.owners = dict(owners)
        self.procs: dict[str, PerformanceProcessor] = {}
        self.states: dict[str, State] = {}
        for name in sorted(set(owners.values())):
            self.start(name)
        self.log: list[Record] = []
        self.read = 0  # the merge stage's committed position in the partials topic
        self.out: Emitted = []

    def owned(self, name: str) -> list[int]:
        return sorted(p for p, owner in self.owners.items() if owner == name)

    def start(self, name: str, restore_from: State | None = None) -> None:
        """A new process: its state restored from what was committed (as the changelog)."""
        proc, state = instance(**self.overrides), State(PerformanceProcessor.stores)
        for store in state.stores:
            for p in self.owned(name):
                store.assign(p)
                if restore_from is not None:
                    for key, value in list(restore_from.store(store.name).items(p)):
                        store.restore(p, key, value)
        topics = [(t, p) for p in self.owned(name) for t in (PREDICTIONS, LABELS)]
        if 0 in self.owned(name):
            topics.append((PARTIALS, 0))
        proc.on_assigned(topics, state)
        self.procs[name], self.states[name] = proc, state

    def step(self, batch: Sequence[Record]) -> None:
        by_owner: dict[str, list[Record]] = {}
        for record in batch:
            by_owner.setdefault(self.owners[record.partition], []).append(record)
        merger = self.owners[0]
        if self.rng.random() < 0.6 and self.read < len(self.log):
            upto = min(len(self.log), self.read + self.rng.randint(1, 12))
            by_owner.setdefault(merger, []).extend(self.log[self.read : upto])
            self.read = upto
        for name, records in sorted(by_owner.items()):
            self.run(name, records)

    def run(self, name: str, records: list[Record]) -> None:
        state = self.states[name]
        result = self.procs[name].process(records, state)
        state.commit()
        self.out += emitted(result)
        for o in result.outputs:
            if o.topic == PARTIALS:
                value = CODEC.decode(CODEC.encode("PerformancePartial", o.value),
                                     "PerformancePartial")  # fmt: skip
                self.log.append(Record(PARTIALS, 0, len(self.log), 0, o.key, value, (),
                                       "PerformancePartial"))  # fmt: skip

    def drain(self) -> None:
        while self.read < len(self.log):
            upto = len(self.log)
            self.run(self.owners[0], self.log[self.read : upto])
            self.read = upto


@pytest.mark.parametrize(
    "config",
    [{}, {"window_size": 20, "report_interval": timedelta(minutes=15)}],
    ids=["window-100", "window-20"],  # 20: more samples released than a window holds
)
def test_partitions_split_over_instances_report_what_one_instance_reports(
    config: dict[str, Any],
) -> None:
    per_stream = streams(seed=21, events=200, partitions=PARTITIONS)
    batches = interleave(per_stream, seed=3)
    want = single(batches, **config)
    assert len([t for t, _ in want if t == REPORTS]) > 50
    assert any(t == ALERTS for t, _ in want)
    assert any(v.get("corrections") for t, v in want if t == REPORTS)
    for owners in ({0: "a", 1: "a", 2: "b", 3: "c"}, {0: "a", 1: "b", 2: "c", 3: "d"}):
        cluster = Cluster(owners, seed=4, **config)
        for batch in batches:
            cluster.step(batch)
        cluster.drain()
        assert cluster.out == want, owners
        if config:  # a partial carries only the newest `window_size` per model route
            sent = Counter((r.offset, s["model"]) for r in cluster.log for s in r.value["samples"])
            assert max(sent.values()) == config["window_size"]


def test_instances_added_and_killed_mid_stream_report_what_one_instance_reports() -> None:
    per_stream = streams(seed=22, events=200, partitions=PARTITIONS)
    batches = interleave(per_stream, seed=5)
    want = single(batches)
    cluster = Cluster({0: "a", 1: "a", 2: "b", 3: "b"}, seed=6)
    for i, batch in enumerate(batches):
        if i == len(batches) // 3:
            # A third instance joins and takes partition 3 (its state from the changelog).
            cluster.owners[3] = "c"
            cluster.procs["b"].on_revoked([(PREDICTIONS, 3)])
            cluster.start("c", restore_from=cluster.states["b"])
            for store in cluster.states["b"].stores:
                store.drop(3)
        if i == 2 * len(batches) // 3:
            # The merging instance is killed in a batch: nothing of it is committed; a new
            # process restores partitions 0 and 1 and the merge stage from the changelog.
            doomed = cluster.states["a"]
            cluster.procs["a"].process([r for r in batch if r.partition in (0, 1)], doomed)
            doomed.abort()
            cluster.start("a", restore_from=doomed)
        cluster.step(batch)
    cluster.drain()
    assert cluster.out == want


def test_a_restarted_merge_stage_shows_its_last_reported_boundary_before_reporting() -> None:
    per_stream = streams(seed=24, events=120, partitions=PARTITIONS)
    cluster = Cluster({0: "a", 1: "a", 2: "b", 3: "b"}, seed=9)
    for batch in interleave(per_stream, seed=10):
        cluster.step(batch)
    cluster.drain()
    last = max(v["window_end"] for t, v in cluster.out if t == REPORTS)
    # A new process of the merging instance, its state restored (as from the changelog),
    # with a /metrics of its own: it has reported nothing yet.
    registry = CollectorRegistry()
    proc = instance(PerformanceMetrics(registry))
    state = State(PerformanceProcessor.stores)
    for store in state.stores:
        for p in (0, 1):
            store.assign(p)
            for key, value in list(cluster.states["a"].store(store.name).items(p)):
                store.restore(p, key, value)
    gauge = "streamml_performance_report_boundary_seconds"
    proc.on_assigned([(PREDICTIONS, 0), (PREDICTIONS, 1), (PARTIALS, 0)], state)
    assert registry.get_sample_value(gauge) == last / 1000
    # An instance without the merge stage's partition has no boundary to show.
    other = CollectorRegistry()
    idle = instance(PerformanceMetrics(other))
    idle.on_assigned([(PREDICTIONS, 2)], State(PerformanceProcessor.stores))
    assert other.get_sample_value(gauge) == 0


def test_partials_out_of_order_or_replayed_give_the_same_reports() -> None:
    per_stream = streams(seed=23, events=300, partitions=PARTITIONS)
    batches = interleave(per_stream, seed=7)
    cluster = Cluster({0: "a", 1: "b", 2: "b", 3: "c"}, seed=8)
    for batch in batches:
        cluster.step(batch)
    cluster.drain()
    want = cluster.out
    partials = cluster.log
    assert len(partials) > 30
    rng = random.Random(9)
    for _ in range(3):
        # Any interleaving of the partitions' partials; within a partition, neighbours
        # swapped (never the first) and some partials replayed later.
        by_partition: dict[int, list[Record]] = {}
        for r in partials:
            by_partition.setdefault(r.value["source_partition"], []).append(r)
        for items in by_partition.values():
            for i in range(1, len(items) - 1):
                if rng.random() < 0.2:
                    items[i], items[i + 1] = items[i + 1], items[i]
        cursors = dict.fromkeys(by_partition, 0)
        shuffled: list[Record] = []
        while any(cursors[p] < len(items) for p, items in by_partition.items()):
            p = rng.choice([p for p, items in by_partition.items() if cursors[p] < len(items)])
            shuffled.append(by_partition[p][cursors[p]])
            cursors[p] += 1
            if rng.random() < 0.1:
                shuffled.append(rng.choice(shuffled))  # a replayed partial
        merger = instance()
        state = new_state((0,))
        merger.on_assigned([(PARTIALS, 0)], state)
        out: Emitted = []
        i = 0
        while i < len(shuffled):
            size = rng.randint(1, 15)
            out += emitted(merger.process(shuffled[i : i + size], state))
            state.commit()
            i += size
        assert out == want


def _sklearn(scores: list[float], labels: list[int]) -> dict[str, float]:
    y, p = np.array(labels), np.array(scores)
    decided = (p >= 0.5).astype(int)
    return {
        "accuracy": accuracy_score(y, decided),
        "precision": precision_score(y, decided, zero_division=0),
        "recall": recall_score(y, decided, zero_division=0),
        "f1": f1_score(y, decided, zero_division=0),
        "roc_auc": roc_auc_score(y, p),
        "log_loss": log_loss(y, p, labels=[0, 1]),
        "brier": brier_score_loss(y, p),
    }


@pytest.mark.parametrize("kind", ["count", "time"])
def test_merged_metrics_equal_sklearn_on_the_union_of_joined_records(kind: str) -> None:
    rng = random.Random(31)
    joined: list[tuple[int, bytes, float, int]] = []  # (sample time, id, score, label)
    per_partition: dict[int, list[Record]] = {p: [] for p in PARTITIONS}
    for i in range(2000):
        p = rng.choice(PARTITIONS)
        t = T0 + 1000 + i * 1500
        score = round(rng.random(), 2)  # ties across partitions
        y = int(rng.random() < score)
        per_partition[p].append(prediction(f"m{i}", t, score, partition=p))
        if i % 7:
            a = t + rng.randint(0, 20_000)
            per_partition[p].append(label(f"m{i}", a, y, partition=p))
            joined.append((a, event_digest(f"m{i}"), score, y))
    end = T0 + 1000 + 2000 * 1500 + 30 * MIN
    for p in PARTITIONS:
        per_partition[p].sort(key=lambda r: r.value.get("labeled_at", r.value.get("event_time")))
        per_partition[p] += [prediction(f"end{p}", end, 0.5, partition=p, route="rules"),
                             label(f"end{p}", end, 0, partition=p)]  # fmt: skip
    window = {"window_kind": kind, "window_size": 500, "window_duration": timedelta(minutes=7),
              "report_interval": timedelta(minutes=1)}  # fmt: skip
    cluster = Cluster({0: "a", 1: "b", 2: "b", 3: "c"}, seed=3, **window)
    for p in PARTITIONS:
        records = per_partition[p]
        for i in range(0, len(records), 97):
            cluster.step(records[i : i + 97])
    cluster.drain()
    last = [v for t, v in cluster.out if t == REPORTS and v["route"] == "primary"
            and v["window"] == "sliding" and v["segment_field"] is None]  # fmt: skip
    checked = 0
    for report in last:
        start, stop = report["window_start"], report["window_end"]
        members = sorted(x for x in joined if x[0] <= stop)
        cut = members[-500:] if kind == "count" else [x for x in members if x[0] > start]
        members = cut
        if len({y for *_, y in members}) < 2:
            continue
        assert report["labeled"] == len(members)
        expected = _sklearn([s for *_, s, _ in members], [y for *_, y in members])
        for name, value in expected.items():
            assert report[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
        checked += 1
    assert checked > 40


def _route_streams(seed: int, events: int) -> list[list[Record]]:
    """A busy primary route and a canary taking 4 % of the traffic, labels 1-3 min late,
    in batches of about a minute of event time over every partition."""
    rng = random.Random(seed)
    timed: list[tuple[int, Record]] = []
    for i in range(events):
        p = rng.choice(PARTITIONS)
        t = T0 + 1000 + i * 3000
        canary = rng.random() < 0.04
        route, version = ("canary", "2") if canary else ("primary", "1")
        score = round(rng.random(), 2)
        eid = f"r{i}"
        timed.append((t, prediction(eid, t, score, route=route, version=version, partition=p)))
        a = t + rng.randint(MIN, 3 * MIN)
        timed.append((a, label(eid, a, int(rng.random() < score), partition=p)))
    timed.sort(key=lambda x: x[0])
    batches: dict[int, list[Record]] = {}
    for t, record in timed:
        batches.setdefault(t // MIN, []).append(record)
    return list(batches.values())


def test_each_route_keeps_interval_counters_of_its_own_window_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The merge stage prunes a route's interval counters before that route's count window:
    a slowly filling canary does not hold back the busy route's counters (they grew without
    bound in the hour-long soak), and what is pruned is never what a report reads."""
    batches = _route_streams(seed=41, events=6000)
    config = {"window_size": 50, "report_interval": timedelta(minutes=1), "segment_fields": []}

    def run_cluster() -> Cluster:
        cluster = Cluster({0: "a", 1: "b", 2: "b", 3: "c"}, seed=8, **config)
        for batch in batches:
            cluster.step(batch)
        cluster.drain()
        return cluster

    cluster = run_cluster()
    # The last sliding report of each route.
    sliding = {v["route"]: v for t, v in cluster.out if t == REPORTS and v["window"] == "sliding"}
    merge = cluster.procs["a"]._merge  # the merge stage runs beside partition 0
    interval = MIN
    oldest: dict[str, int] = {}
    for view in merge._views.values():
        for k, bucket in view.buckets.items():
            for model_id, *_ in bucket:
                route = view.model_route(model_id)[2]
                oldest[route] = min(oldest.get(route, k), k)
    start = {route: report["window_start"] // interval for route, report in sliding.items()}
    # The canary's 50 samples span about 60 minutes; the primary's about 3.
    assert start["primary"] - start["canary"] > 30
    assert oldest["primary"] >= start["primary"]
    assert oldest["canary"] >= start["canary"]

    # Pruning changes no report: the same input with nothing pruned reports the same.
    monkeypatch.setattr(BoundaryWork, "_prune_route_buckets",
                        staticmethod(lambda v, before_k: None))  # fmt: skip
    unpruned = run_cluster()
    assert unpruned.out == cluster.out

    def counters(c: Cluster) -> int:
        return sum(len(b) for v in c.procs["a"]._merge._views.values() for b in v.buckets.values())

    assert counters(unpruned) > 2 * counters(cluster)
