"""Builders for the performance unit tests: records, a processor with small intervals, a driver."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from services.performance.processor import PerformanceProcessor
from services.performance.settings import PerformanceSettings
from streamml.processor import Record, Result
from streamml.state import State

MIN = 60_000
HOUR = 60 * MIN
T0 = 1_800_000_000_000  # an event-time origin, a multiple of the report interval

PREDICTIONS = "t.predictions"
SHADOW = "t.predictions.shadow"
LABELS = "t.labels"
REPORTS = "t.performance"
ALERTS = "t.performance.alerts"


def settings(**overrides: Any) -> PerformanceSettings:
    values: dict[str, Any] = {
        "label_horizon": timedelta(hours=2),
        "early_label_grace": timedelta(minutes=10),
        "late_label_memory": timedelta(hours=1),
        "allowed_lateness": timedelta(0),
        "report_interval": timedelta(minutes=1),
        "window_kind": "count",
        "window_size": 1000,
        "segment_fields": ["country"],
        "segment_max_values": 3,
        "slo_min": {},
    }
    values.update(overrides)
    return PerformanceSettings(**values)


def processor(**overrides: Any) -> PerformanceProcessor:
    return PerformanceProcessor(
        settings(**overrides),
        prediction_topics=[PREDICTIONS, SHADOW],
        label_topics=[LABELS],
        optional_topics=[SHADOW],
        report_topic=REPORTS,
        alert_topic=ALERTS,
        clock=lambda: 1.0,
    )


def new_state(partitions: Iterable[int] = (0,)) -> State:
    state = State(PerformanceProcessor.stores)
    for store in state.stores:
        for p in partitions:
            store.assign(p)
    return state


_offsets: dict[tuple[str, int], int] = {}


def prediction(
    event_id: str,
    t: int,
    score: float,
    *,
    route: str = "primary",
    version: str = "1",
    threshold: float = 0.5,
    country: str = "US",
    partition: int = 0,
    topic: str | None = None,
) -> Record:
    value = {
        "event_id": event_id,
        "entity_id": "e-" + event_id,
        "event_time": t,
        "scored_at": t,
        "model_name": "fraud",
        "model_version": version,
        "score": score,
        "threshold": threshold,
        "decision": score >= threshold,
        "route": route,
        "fallback_reason": None,
        "latency_ms": 1.0,
        "feature_set_hash": "h",
        "features_computed_at": None,
        "segments": {"country": country},
    }
    topic = topic or (SHADOW if route == "shadow" else PREDICTIONS)
    return _record(topic, partition, value, "Prediction")


def label(event_id: str, labeled_at: int, y: int, *, partition: int = 0) -> Record:
    value = {
        "event_id": event_id,
        "entity_id": "e-" + event_id,
        "label": y,
        "labeled_at": labeled_at,
        "source": "chargeback",
    }
    return _record(LABELS, partition, value, "Label")


def _record(topic: str, partition: int, value: dict[str, Any], schema: str) -> Record:
    offset = _offsets.get((topic, partition), 0)
    _offsets[(topic, partition)] = offset + 1
    return Record(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=0,
        key=value["entity_id"].encode(),
        value=value,
        headers=(),
        schema=schema,
    )


def run(proc: PerformanceProcessor, state: State, batches: Sequence[Sequence[Record]]) -> Result:
    """Process the batches, committing each, and return everything they produced."""
    total = Result()
    for batch in batches:
        result = proc.process(list(batch), state)
        state.commit()
        total.outputs += result.outputs
        total.rejections += result.rejections
    return total


def reports(result: Result, **match: Any) -> list[dict[str, Any]]:
    """PerformanceReport values of ``result`` whose fields equal ``match``."""
    found = []
    for out in result.outputs:
        if out.schema != "PerformanceReport":
            continue
        if all(out.value.get(k) == v for k, v in match.items()):
            found.append(dict(out.value))
    return found


def tick(t: int, *, partition: int = 0) -> list[Record]:
    """Records that move both streams of a partition just past event time ``t``."""
    t += 1
    return [
        prediction(f"tick-p-{t}-{partition}", t, 0.5, route="rules", partition=partition),
        prediction(
            f"tick-s-{t}-{partition}", t, 0.5, route="shadow", version="tick", partition=partition
        ),
        label(f"tick-l-{t}-{partition}", t, 0, partition=partition),
    ]
