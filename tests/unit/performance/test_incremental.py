"""The in-memory shortcuts of a boundary give what a rebuild from the stores gives.

Between boundaries the processor keeps the sliding window (numpy columns it appends released
samples to and drops from the front), the due samples by interval and the per-model release
queues pruning pops from. A processor that re-reads every partition from its stores before
each batch (``on_assigned``, as after a rebalance) builds all of them again from scratch at
every boundary; both must emit exactly the same records and leave exactly the same state.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.performance.processor import PerformanceProcessor
from streamml.processor import Record
from streamml.state import State

from .support import REPORTS, new_state, processor
from .test_determinism import PARTITIONS, interleave, streams

CONFIGS: dict[str, dict[str, Any]] = {
    # A small count window: pruned and moved at almost every boundary.
    "count": {"window_size": 40, "report_interval": timedelta(minutes=5)},
    # A time window shorter than the report interval: samples arrive and leave at once.
    "time-short": {
        "window_kind": "time",
        "window_duration": timedelta(minutes=2),
        "report_interval": timedelta(minutes=5),
    },
    "time": {
        "window_kind": "time",
        "window_duration": timedelta(minutes=30),
        "report_interval": timedelta(minutes=1),
        "allowed_lateness": timedelta(minutes=3),
        "segment_fields": ["country", "missing"],
    },
}


def _run(
    batches: list[list[Record]], settings: dict[str, Any], *, reload: bool
) -> tuple[list[tuple[str, bytes | str | None, list[tuple[str, Any]]]], list[Any]]:
    proc: PerformanceProcessor = processor(**settings)
    state: State = new_state(PARTITIONS)
    assigned = [("t.predictions", p) for p in PARTITIONS]
    proc.on_assigned(assigned, state)
    outputs = []
    for batch in batches:
        if reload:
            proc.on_assigned(assigned, state)  # forget every view and cache: rebuild
        result = proc.process(batch, state)
        state.commit()
        outputs += [(o.topic, o.key, sorted(o.value.items())) for o in result.outputs]
        outputs += [("rejected", r.record.value["event_id"], [(r.reason, r.message)])
                    for r in result.rejections]  # fmt: skip
    stores = [sorted(store.items(p)) for store in state.stores for p in PARTITIONS]
    return outputs, stores


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_kept_windows_equal_windows_rebuilt_from_state(name: str) -> None:
    batches = interleave(streams(seed=31, events=250), seed=8)
    kept = _run(batches, CONFIGS[name], reload=False)
    rebuilt = _run(batches, CONFIGS[name], reload=True)
    reports = [values for topic, _, values in kept[0] if topic == REPORTS]
    assert len(reports) > 100
    assert any(dict(r)["corrections"] for r in reports)  # relabelled windows are rebuilt
    assert any(dict(r)["labeled"] for r in reports if dict(r)["window"] == "sliding")
    assert kept == rebuilt
