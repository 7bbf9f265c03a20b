"""Reports are a function of the input streams, not of batching, interleaving, aborts or restarts.

This is the pure-core half of the exactly-once proof: the integration test kills the real
service; here the same streams are fed in different interleavings and batch sizes, with
aborted batches and restarts from the committed state, and the emitted reports must match.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from typing import Any

from services.performance.processor import PerformanceProcessor
from streamml.processor import Record
from streamml.state import State

from .support import ALERTS, HOUR, LABELS, MIN, REPORTS, T0, label, new_state, prediction, processor

PARTITIONS = (0, 1)


def streams(
    seed: int = 11, events: int = 300, partitions: tuple[int, ...] = PARTITIONS
) -> dict[tuple[str, int], list[Record]]:
    """Per (stream, partition): time-ordered records with every join path in them."""
    rng = random.Random(seed)
    out: dict[tuple[str, int], list[Record]] = {}
    for p in partitions:
        preds: list[tuple[int, Record]] = []
        shadow: list[tuple[int, Record]] = []
        labels: list[tuple[int, Record]] = []
        t = T0 + 1000
        for i in range(events):
            t += rng.randint(100, 20_000)
            eid = f"p{p}-e{i}"
            score = round(rng.random(), 3)
            y = int(rng.random() < 0.15 + 0.7 * score)
            country = rng.choice(["US", "GB", "FR", "DE", "IT"])  # cap is 3: some -> other
            route = "canary" if rng.random() < 0.2 else "primary"
            version = "2" if route == "canary" else "1"
            preds.append((t, prediction(eid, t, score, route=route, version=version,
                                        country=country, partition=p)))  # fmt: skip
            if rng.random() < 0.05:
                preds.append((t, prediction(eid, t, score, route=route, version=version,
                                            country=country, partition=p)))  # fmt: skip
            if rng.random() < 0.3:
                s2 = round(min(1.0, max(0.0, score + rng.gauss(0, 0.2))), 3)
                shadow.append((t, prediction(eid, t, s2, route="shadow", version="3",
                                             country=country, partition=p)))  # fmt: skip
            r = rng.random()
            if r < 0.85:
                delay = rng.randint(0, 5000) if rng.random() < 0.15 else rng.randint(0, 40 * MIN)
                if rng.random() < 0.03:
                    delay = 2 * HOUR + rng.randint(1, HOUR)  # too late
                a = t + delay
                labels.append((a, label(eid, a, y, partition=p)))
                if rng.random() < 0.05:
                    labels.append((a, label(eid, a, y, partition=p)))  # duplicate
                if rng.random() < 0.06:
                    a2 = a + rng.randint(1, 30 * MIN)
                    labels.append((a2, label(eid, a2, 1 - y, partition=p)))  # correction
            if rng.random() < 0.02:
                labels.append((t, label(f"{eid}-orphan", t, 1, partition=p)))
        end = t + 4 * HOUR  # push both streams past every horizon
        preds.append((end, prediction(f"p{p}-end", end, 0.5, partition=p)))
        labels.append((end, label(f"p{p}-end", end, 1, partition=p)))
        for name, items in (("pred", preds), ("shadow", shadow), ("label", labels)):
            items.sort(key=lambda item: item[0])
            out[(name, p)] = [record for _, record in items]
    return out


def interleave(per_stream: dict[tuple[str, int], list[Record]], seed: int) -> list[list[Record]]:
    """A random merge that keeps each stream's order, cut into random batches."""
    rng = random.Random(seed)
    cursors = {key: 0 for key in per_stream}
    merged: list[Record] = []
    while True:
        live = [key for key, i in cursors.items() if i < len(per_stream[key])]
        if not live:
            break
        # Streams run at different speeds, as consumers fetch unevenly.
        key = rng.choice(live)
        for _ in range(rng.randint(1, 30)):
            if cursors[key] < len(per_stream[key]):
                merged.append(per_stream[key][cursors[key]])
                cursors[key] += 1
    batches = []
    i = 0
    while i < len(merged):
        size = rng.randint(1, 80)
        batches.append(merged[i : i + size])
        i += size
    return batches


def _processor() -> PerformanceProcessor:
    return processor(
        window_size=100,
        slo_min={"roc_auc": 0.9, "recall": 0.8},
        slo_consecutive_windows=2,
        slo_min_labeled=20,
        canary_margin=0.0,
        report_interval=timedelta(minutes=5),
    )


def _restored(old: State) -> State:
    """A new State filled from what was committed, as a changelog restore does."""
    fresh = State(PerformanceProcessor.stores)
    for store in old.stores:
        target = fresh.store(store.name)
        for p in PARTITIONS:
            target.assign(p)
            for key, value in list(store.items(p)):
                target.restore(p, key, value)
    return fresh


def execute(
    batches: list[list[Record]], *, crash_seed: int | None = None
) -> tuple[list[tuple[str, dict[str, Any]]], Counter[tuple[str, str]]]:
    rng = random.Random(crash_seed)
    proc = _processor()
    state = new_state(PARTITIONS)
    proc.on_assigned([(t, p) for t in ("a",) for p in PARTITIONS], state)
    ordered: list[tuple[str, dict[str, Any]]] = []
    dead: Counter[tuple[str, str]] = Counter()
    i = 0
    while i < len(batches):
        if crash_seed is not None and rng.random() < 0.08:
            # The transaction fails: nothing of this batch is committed; the batch comes again.
            proc.process(batches[i], state)
            state.abort()
            if rng.random() < 0.5:  # ... and sometimes the process dies and restarts
                state = _restored(state)
                proc = _processor()
                proc.on_assigned([("a", p) for p in PARTITIONS], state)
            continue
        result = proc.process(batches[i], state)
        state.commit()
        for out in result.outputs:
            if out.topic in (REPORTS, ALERTS):
                ordered.append((out.topic, dict(out.value)))
            else:
                assert out.topic == LABELS + ".dlq"
                reason = dict(out.headers)["dlq.error.class"].decode()
                dead[(out.value["event_id"], reason)] += 1
        for rej in result.rejections:
            # A label rejected on arrival (byte-identical dead letter) or later from state
            # (re-encoded) depends on arrival order; what reaches labels.dlq must not.
            dead[(rej.record.value["event_id"], rej.reason)] += 1
        i += 1
    return ordered, dead


def test_reports_do_not_depend_on_interleaving_batching_aborts_or_restarts() -> None:
    per_stream = streams()
    baseline = execute(interleave(per_stream, seed=1))
    reports, dead = baseline
    # The run exercised what it claims to.
    assert len(reports) > 100
    assert any(t == ALERTS for t, _ in reports)
    assert {reason for _, reason in dead} == {"late", "orphan"}
    assert any("orphan" in eid for eid, _ in dead)
    perf = [r for t, r in reports if t == REPORTS]
    assert any(r["corrections"] for r in perf)
    assert {r["route"] for r in perf} >= {"primary", "canary", "shadow"}
    assert any(r["segment_value"] == "other" for r in perf)
    for seed in (2, 3):
        assert execute(interleave(per_stream, seed=seed)) == baseline
    assert execute(interleave(per_stream, seed=4), crash_seed=5) == baseline
    assert execute(interleave(per_stream, seed=6), crash_seed=7) == baseline
