"""The pure features processor: dedup, validation, lateness, windows, circuit, offline parity."""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.features.circuit import CircuitState, FailStopCircuit
from services.features.entity_state import EntityHistory
from services.features.feature_set import FeatureSet, demo_feature_set
from services.features.metrics import FeaturesMetrics, default_metrics
from services.features.offline import build_matrix
from services.features.processor import FeaturesProcessor
from streamml.processor import Record, Result
from streamml.state import State
from streamml.synthetic import generate_events

LATENESS = 5_000


def _processor(**kwargs: Any) -> FeaturesProcessor:
    kwargs.setdefault("feature_set", demo_feature_set(allowed_lateness_ms=LATENESS))
    return FeaturesProcessor(output_topic="t.features", clock=lambda: 1_800_000_000.0, **kwargs)


def _state(proc: FeaturesProcessor, partitions: Sequence[int] = (0,)) -> State:
    state = State(proc.stores)
    for store in state.stores:
        for p in partitions:
            store.assign(p)
    proc.on_assigned([("t.events", p) for p in partitions], state)
    return state


def _records(
    events: Sequence[dict[str, Any]],
    partition: int = 0,
    start: int = 0,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> list[Record]:
    return [
        Record(
            topic="t.events",
            partition=partition,
            offset=start + i,
            timestamp_ms=e["event_time"],
            key=e["entity_id"].encode(),
            value=e,
            headers=headers,
            schema="Event",
        )
        for i, e in enumerate(events)
    ]


def _run(proc: FeaturesProcessor, state: State, records: list[Record]) -> Result:
    result = proc.process(records, state)
    state.commit()
    return result


def _events(n: int, seed: int = 1, **kwargs: Any) -> list[dict[str, Any]]:
    return [e for e, _ in generate_events(n, seed=seed, **kwargs)]


def test_one_vector_per_event_matching_the_feature_vector_schema() -> None:
    proc = _processor()
    state = _state(proc)
    events = _events(200)
    result = _run(proc, state, _records(events))
    assert not result.rejections and result.halt is None
    assert [o.value["event_id"] for o in result.outputs] == [e["event_id"] for e in events]
    schema = fastavro.parse_schema(
        json.loads(
            (Path(__file__).resolve().parents[3] / "schemas/feature_vector.avsc").read_text()
        )
    )
    for out in result.outputs:
        assert out.topic == "t.features" and out.schema == "FeatureVector"
        assert out.key == out.value["entity_id"]
        # The values are a row of the batch's float64 matrix (the codec writes its memory).
        values = out.value["values"]
        assert isinstance(values, np.ndarray) and values.dtype == np.float64
        plain = {**out.value, "values": values.tolist()}
        assert fastavro.validate(plain, schema, raise_errors=True)
        assert list(out.value["names"]) == list(proc.feature_set.names)
        assert len(out.value["values"]) == len(proc.feature_set.names)
        assert all(math.isfinite(v) for v in out.value["values"])
        assert out.value["computed_at"] == 1_800_000_000_000
        assert set(out.value["categories"]) == {
            "country",
            "channel",
            "merchant_category",
            "currency",
        }


def test_duplicates_yield_nothing_live_or_replayed_even_in_later_batches() -> None:
    proc = _processor()
    state = _state(proc)
    events = _events(50)
    first = _run(proc, state, _records(events))
    assert len(first.outputs) == 50
    again = _run(proc, state, _records(events[:10], start=50))
    replayed = _run(proc, state, _records(events[10:20], start=60, headers=(("replay.id", b"r1"),)))
    same_batch = _run(proc, state, _records([events[30], events[30]], start=70))
    assert again.outputs == replayed.outputs == same_batch.outputs == []
    assert not again.rejections and not replayed.rejections


def test_a_duplicate_inside_one_batch_is_dropped() -> None:
    proc = _processor()
    state = _state(proc)
    e = _events(1)[0]
    result = _run(proc, state, _records([e, copy.deepcopy(e)]))
    assert len(result.outputs) == 1


def test_replay_headers_are_carried_to_the_vector() -> None:
    proc = _processor()
    state = _state(proc)
    headers = (("replay.id", b"r1"), ("trace", b"x"))
    result = _run(proc, state, _records(_events(1), headers=headers))
    assert result.outputs[0].headers == (("replay.id", b"r1"),)


def test_invalid_records_become_rejections_with_reason_and_are_not_remembered() -> None:
    proc = _processor()
    state = _state(proc)
    good = _events(3)
    bad = copy.deepcopy(good[1])
    bad["payload"]["amount"] = -5.0
    result = _run(proc, state, _records([good[0], bad, good[2]]))
    assert [o.value["event_id"] for o in result.outputs] == [
        good[0]["event_id"],
        good[2]["event_id"],
    ]
    (rejection,) = result.rejections
    assert rejection.reason == "validation.range" and rejection.stage == "validate"
    assert "payload.amount=-5.0" in rejection.message and rejection.record.offset == 1
    # Fixed and redriven, the same event id is processed (it was never remembered).
    redriven = _run(proc, state, _records([good[1]], start=3, headers=(("redrive.id", b"1"),)))
    assert len(redriven.outputs) == 1


def test_event_far_ahead_of_the_partition_is_rejected_but_the_first_event_is_not() -> None:
    proc = _processor()
    state = _state(proc)
    events = _events(2)
    events[1] = copy.deepcopy(events[1])
    events[1]["event_time"] = events[0]["event_time"] + 3 * 86_400_000
    result = _run(proc, state, _records(events))
    assert len(result.outputs) == 1
    assert result.rejections[0].reason == "validation.event_time"


def test_events_older_than_the_dedup_horizon_are_rejected_not_recomputed() -> None:
    proc = _processor(dedup_retention_ms=3_600_000)
    state = _state(proc)
    events = _events(2000, rate_per_s=0.2)  # spans ~2.8 hours
    _run(proc, state, _records(events))
    again = _run(proc, state, _records(events[:5], start=5000))
    assert again.outputs == []
    assert {r.reason for r in again.rejections} == {"validation.event_time"}


def test_late_events_go_to_the_dlq_as_late_within_bound_they_are_accepted() -> None:
    proc = _processor()
    state = _state(proc)
    base = _events(1)[0]

    def at(t: int, i: int) -> dict[str, Any]:
        e = copy.deepcopy(base)
        e["event_id"] = f"e{i}"
        e["event_time"] = t
        return e

    t0 = base["event_time"]
    result = _run(
        proc,
        state,
        _records(
            [
                at(t0, 0),
                at(t0 + 10_000, 1),
                at(t0 + 10_000 - LATENESS, 2),
                at(t0 + 10_000 - LATENESS - 1, 3),
            ]
        ),
    )
    assert [o.value["event_id"] for o in result.outputs] == ["e0", "e1", "e2"]
    (late,) = result.rejections
    assert late.reason == "late" and "allowed lateness is 5000 ms" in late.message


def _reference(
    events: list[dict[str, Any]], fs_lateness: int = LATENESS
) -> dict[str, dict[str, float]]:
    """Plain-Python window aggregates over a deduplicated stream."""
    by_entity: dict[str, list[tuple[int, float]]] = {}
    out = {}
    for e in events:
        t, v = e["event_time"], e["payload"]["amount"]
        past = by_entity.setdefault(e["entity_id"], [])
        row = {}
        for label, length in (("10m", 600_000), ("1h", 3_600_000), ("24h", 86_400_000)):
            w = [a for s, a in past if t - length <= s < t - fs_lateness]
            row[f"amount_{label}_count"] = float(len(w))
            row[f"amount_{label}_sum"] = math.fsum(w)
            row[f"amount_{label}_min"] = min(w) if w else 0.0
            row[f"amount_{label}_max"] = max(w) if w else 0.0
        past.append((t, v))
        out[e["event_id"]] = row
    return out


def test_aggregates_equal_a_plain_python_reference_with_many_batches_and_partitions() -> None:
    proc = _processor()
    state = _state(proc, partitions=(0, 1))
    events = _events(3000, n_entities=40, rate_per_s=0.5)
    got: dict[str, dict[str, float]] = {}
    rng = random.Random(0)
    i = 0
    while i < len(events):
        n = rng.randint(1, 300)
        chunk = events[i : i + n]
        for part in (0, 1):
            mine = [e for e in chunk if int(e["entity_id"][-1]) % 2 == part]
            result = _run(proc, state, _records(mine, partition=part, start=i))
            for o in result.outputs:
                got[o.value["event_id"]] = dict(
                    zip(o.value["names"], o.value["values"], strict=True)
                )
        i += n
    reference = _reference(events)
    assert got.keys() == reference.keys()
    for event_id, row in reference.items():
        for name, value in row.items():
            assert got[event_id][name] == value, (event_id, name)


def test_state_survives_a_restart_through_the_changelog_bytes() -> None:
    events = _events(400, n_entities=20)
    proc = _processor()
    state = _state(proc)
    whole = _run(proc, state, _records(events))

    proc1 = _processor()
    state1 = _state(proc1)
    first = _run(proc1, state1, _records(events[:250]))
    # "Restart": a new processor whose state is restored from the committed key/values.
    proc2 = _processor()
    state2 = State(proc2.stores)
    for old, new in zip(state1.stores, state2.stores, strict=True):
        new.assign(0)
        for k, v in old.items(0):
            new.restore(0, k, v)
    proc2.on_assigned([("t.events", 0)], state2)
    second = _run(proc2, state2, _records(events[200:], start=200))  # overlap = redelivery
    values = [o.value["values"].tolist() for o in first.outputs + second.outputs]
    assert values == [o.value["values"].tolist() for o in whole.outputs]


def test_circuit_trips_holds_the_rest_and_resumes_by_operator() -> None:
    circuit = FailStopCircuit(window=20, threshold=0.5, min_records=10)
    proc = _processor(circuit=circuit)
    state = _state(proc)
    events = _events(60)
    bad = []
    for original in events[:15]:
        e = copy.deepcopy(original)
        e["payload"]["currency"] = "??"
        bad.append(e)
    records = _records(bad + events[15:])
    result = _run(proc, state, records)
    assert result.halt is not None
    assert "validation.pattern" in result.halt.reason
    assert result.outputs == []
    tripped_at = len(result.rejections)  # the record that tripped it was rejected
    assert tripped_at == 10
    assert list(result.halt.unconsumed) == records[tripped_at:]
    assert result.halt.probe_after_s is None
    assert not proc.is_ready()
    # While open, nothing is processed.
    held = _run(proc, state, records[tripped_at:])
    assert held.outputs == [] and held.halt is not None
    assert list(held.halt.unconsumed) == records[tripped_at:]
    proc.on_resume(probe=False)
    assert proc.is_ready() and circuit.state is CircuitState.CLOSED
    after = _run(proc, state, records[tripped_at:])
    assert after.halt is None
    assert len(after.outputs) == 45 and len(after.rejections) == 5


def test_circuit_probe_after_cool_down() -> None:
    circuit = FailStopCircuit(window=20, threshold=0.5, min_records=4, probe_after_s=30.0)
    proc = _processor(circuit=circuit)
    state = _state(proc)
    events = _events(20)
    bad = [dict(copy.deepcopy(e), event_type="x") for e in events[:4]]
    result = _run(proc, state, _records(bad + events[4:]))
    assert result.halt is not None and result.halt.probe_after_s == 30.0
    proc.on_resume(probe=True)
    assert circuit.state is CircuitState.HALF_OPEN
    probe = _run(proc, state, list(result.halt.unconsumed))
    assert probe.halt is None and len(probe.outputs) == 16
    assert circuit.state is CircuitState.CLOSED


def test_offline_matrix_equals_the_online_vectors_bit_for_bit() -> None:
    events = _events(700, n_entities=50)
    dup = copy.deepcopy(events[100])
    bad = copy.deepcopy(events[200])
    bad["event_id"] = "broken"
    bad["payload"]["amount"] = math.nan
    stream = [*events[:300], dup, bad, *events[300:]]
    proc = _processor()
    state = _state(proc)
    online = []
    for start in range(0, len(stream), 97):
        online += _run(proc, state, _records(stream[start : start + 97], start=start)).outputs
    matrix = build_matrix(stream, feature_set=demo_feature_set(allowed_lateness_ms=LATENESS))
    assert matrix.event_ids == [o.value["event_id"] for o in online]
    assert (
        matrix.values.tobytes()
        == __import__("numpy").array([o.value["values"] for o in online], dtype="float64").tobytes()
    )
    assert matrix.duplicates == 1
    assert matrix.rejected == [("broken", "validation.finite", matrix.rejected[0][2])]


def test_custom_dedup_field() -> None:
    proc = _processor(dedup_field="payload.merchant_id")
    state = _state(proc)
    e1, e2 = _events(2)
    e2 = copy.deepcopy(e2)
    e2["payload"]["merchant_id"] = e1["payload"]["merchant_id"]
    result = _run(proc, state, _records([e1, e2]))
    assert len(result.outputs) == 1 and result.outputs[0].value["event_id"] == e1["event_id"]


def test_corrupt_entity_state_raises_so_the_runtime_isolates_the_record() -> None:
    proc = _processor()
    state = _state(proc)
    e = _events(1)[0]
    state.store("entities").put(0, e["entity_id"].encode(), b"garbage")
    with pytest.raises(Exception, match="entity state"):
        proc.process(_records([e]), state)


def test_a_raising_batch_does_not_count_twice_in_the_circuit() -> None:
    circuit = FailStopCircuit(window=100, threshold=0.5, min_records=4)
    proc = _processor(circuit=circuit)
    state = _state(proc)
    events = _events(3)
    bad = [dict(copy.deepcopy(e), event_type="x") for e in events]
    state.store("entities").put(0, events[0]["entity_id"].encode(), b"garbage")
    good_but_corrupt_state = events[0]
    with pytest.raises(Exception, match="entity state"):
        proc.process(_records([*bad, good_but_corrupt_state]), state)
    assert circuit.invalid_share == 0.0


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_processor_vectors_do_not_depend_on_arrival_order_within_lateness(
    data: st.DataObject,
) -> None:
    """Whole pipeline (dedup, validation, state bytes, batching): shuffled == in order."""
    n = data.draw(st.integers(5, 80))
    seed = data.draw(st.integers(0, 10_000))
    events = _events(n, seed=seed, n_entities=4, rate_per_s=0.5)
    jitter = data.draw(st.lists(st.integers(0, LATENESS), min_size=n, max_size=n))
    shuffled = [
        events[i] for i in sorted(range(n), key=lambda i: (events[i]["event_time"] + jitter[i], i))
    ]

    def run(stream: list[dict[str, Any]]) -> dict[str, list[float]]:
        proc = _processor()
        state = _state(proc)
        sizes = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=40))
        out: dict[str, list[float]] = {}
        i = 0
        for size in sizes * (n // len(sizes) + 1):
            if i >= len(stream):
                break
            result = _run(proc, state, _records(stream[i : i + size], start=i))
            assert not result.rejections
            out.update((o.value["event_id"], o.value["values"].tolist()) for o in result.outputs)
            i += size
        return out

    assert run(shuffled) == run(events)


def _vectors(result: Result) -> list[tuple[str, list[float]]]:
    return [(o.value["event_id"], o.value["values"].tolist()) for o in result.outputs]


def test_cached_histories_give_the_vectors_of_decoding_every_time() -> None:
    events = _events(1500, n_entities=30, rate_per_s=0.5)
    cached, uncached = _processor(), _processor(history_cache_size=0)
    s1, s2 = _state(cached), _state(uncached)
    for i in range(0, len(events), 100):
        chunk = _records(events[i : i + 100], start=i)
        assert _vectors(_run(cached, s1, chunk)) == _vectors(_run(uncached, s2, chunk))
    assert len(uncached._histories) == 0
    assert 0 < len(cached._histories) <= 30


def test_an_aborted_batch_does_not_leave_its_histories_in_the_cache() -> None:
    # The runtime aborts a transaction (state rolled back) and processes the records
    # again: the vectors must be those of the first attempt, not of a history that
    # already holds the batch's events.
    events = _events(400, n_entities=5, rate_per_s=0.5)
    proc = _processor()
    state = _state(proc)
    _run(proc, state, _records(events[:200]))
    batch = _records(events[200:300], start=200)
    first = _vectors(proc.process(batch, state))
    state.abort()
    assert first == _vectors(proc.process(batch, state))
    state.commit()
    # A rollback to a savepoint, as when the runtime isolates a record.
    batch = _records(events[300:], start=300)
    savepoint = state.savepoint()
    first = _vectors(proc.process(batch, state))
    state.rollback(savepoint)
    assert first == _vectors(proc.process(batch, state))
    assert len(first) == 100


def _raise(*args: Any) -> bytes:
    raise RuntimeError("boom")


def test_a_record_that_raises_mid_way_leaves_no_changed_history_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = _events(300, n_entities=3, rate_per_s=0.5)
    proc, reference = _processor(), _processor(history_cache_size=0)
    state, ref_state = _state(proc), _state(reference)
    _run(proc, state, _records(events[:100]))
    _run(reference, ref_state, _records(events[:100]))
    savepoint = state.savepoint()
    # The history has taken the event in when writing it fails.
    monkeypatch.setattr(EntityHistory, "to_bytes", _raise)
    with pytest.raises(RuntimeError):
        proc.process(_records(events[100:101], start=100), state)
    monkeypatch.undo()
    state.rollback(savepoint)
    rest = _records(events[100:], start=100)
    assert _vectors(_run(proc, state, rest)) == _vectors(_run(reference, ref_state, rest))


def _bits(result: Result) -> list[tuple[str, bytes]]:
    return [(o.value["event_id"], o.value["values"].tobytes()) for o in result.outputs]


def test_invalid_events_in_a_batch_do_not_change_the_vectors_of_the_others() -> None:
    # The batch path computes the stateless features of the rule-abiding events only (rows
    # remapped past the invalid ones); the vectors must be those of a clean batch.
    events = _events(300)
    broken = copy.deepcopy(events[:40])
    for i, event in enumerate(broken):
        event["event_id"] = f"bad-{i}"
        event["payload"]["amount"] = -1.0 if i % 2 else math.nan
    mixed = [e for pair in zip(events[:40], broken, strict=True) for e in pair] + events[40:]
    proc_a, proc_b = _processor(), _processor()
    clean = _run(proc_a, _state(proc_a), _records(events))
    dirty = _run(proc_b, _state(proc_b), _records(mixed))
    assert len(dirty.rejections) == 40
    assert _bits(dirty) == _bits(clean)


def test_event_by_event_fallback_gives_the_same_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    # When the column-wise pass cannot run (it raised), every event is computed on its own.
    events = _events(400)
    proc_a, proc_b = _processor(), _processor()
    fast = _run(proc_a, _state(proc_a), _records(events))

    def refuse(*_args: Any) -> Any:
        raise TypeError("no column-wise pass here")

    monkeypatch.setattr(FeatureSet, "stateless_matrix", refuse)  # frozen: patch the class
    monkeypatch.setattr(proc_b._rules, "failing", refuse)
    slow = _run(proc_b, _state(proc_b), _records(events))
    assert len(fast.outputs) == 400
    assert _bits(slow) == _bits(fast)


def test_the_fast_writer_comes_back_once_the_registry_answers() -> None:
    from services.features import native
    from streamml.codec import AvroCodec
    from streamml.errors import RegistryUnavailableError
    from tests.registry_double import FaultyRegistry

    if native.KERNEL is None:
        pytest.skip("the C kernel is not built")
    with FaultyRegistry("unavailable") as registry:
        codec = AvroCodec(registry_url=registry.url, registry_config={"max.retries": 0})
        proc = _processor()
        proc.on_codec(codec)  # the registry does not answer: no writer yet, no error
        state = _state(proc)
        events = _events(20)
        with pytest.raises(RegistryUnavailableError):  # the runtime retries the batch
            proc.process(_records(events), state)
        state.abort()
        registry.mode = "ok"
        result = _run(proc, state, _records(events))
    raw = [out.raw_value for out in result.outputs]
    assert len(raw) == 20 and all(r is not None for r in raw)  # written by the fast writer
    for out in result.outputs:
        assert out.raw_value == codec.encode("FeatureVector", out.value, topic="t.features")


def test_the_core_counts_into_the_metrics_object_it_is_given() -> None:
    """One metrics pattern: the core records into the injected metrics (here on a registry
    of its own), not into module-level collectors of the default registry."""
    registry = CollectorRegistry()
    proc = _processor(metrics=FeaturesMetrics(registry))
    state = _state(proc)
    events = _events(20)
    _run(proc, state, _records(events))
    _run(proc, state, _records(events[:5], start=20))
    _run(proc, state, _records(events[5:8], start=25, headers=(("replay.id", b"r1"),)))
    duplicates = "streamml_features_duplicates_total"
    assert registry.get_sample_value(duplicates, {"source": "live"}) == 5
    assert registry.get_sample_value(duplicates, {"source": "replay"}) == 3
    assert registry.get_sample_value("streamml_features_circuit_state") == 0
    assert proc.metrics is not default_metrics()
