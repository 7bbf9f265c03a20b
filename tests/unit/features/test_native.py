"""The C kernel (services/features/_native.c) against the Python code it replaces, bit for bit."""

from __future__ import annotations

import math
import struct
from array import array
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.features import native
from services.features.entity_state import EntityHistory
from services.features.feature_set import (
    FeatureSet,
    HistoryCount,
    RatioToRunningMean,
    SecondsSincePrevious,
    WindowStats,
    demo_feature_set,
)
from services.features.processor import FeaturesProcessor
from services.features.vector_writer import VectorWriter
from streamml.codec import AvroCodec
from streamml.processor import Record
from streamml.state import State
from streamml.synthetic import generate_events

try:
    from services.features import _native  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a machine without a C compiler
    _native = None

pytestmark = pytest.mark.skipif(_native is None, reason="the C kernel is not built here")

T0 = 1_700_000_000_000
FINITE = st.floats(allow_nan=False, allow_infinity=False)
AMOUNTS = st.one_of(
    st.floats(min_value=0.0, max_value=1e6),
    st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 0.1, 3.0, 1e15, 2.0**53 + 1]),
    FINITE,
)


def _bits(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def test_the_kernel_agrees_with_math_here_and_is_used() -> None:
    assert native._agrees(_native)
    assert native.KERNEL is _native
    assert demo_feature_set()._native_plan is not None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(FINITE, st.sampled_from([1e308, -1e308, math.inf, math.nan]))))
def test_fsum_is_math_fsum_or_none_where_python_raises_or_is_not_finite(
    values: list[float],
) -> None:
    got = _native.fsum(array("d", values))
    try:
        expected = math.fsum(values)
    except (OverflowError, ValueError):
        assert got is None
        return
    if not math.isfinite(expected) or not all(math.isfinite(v) for v in values):
        assert got is None
    else:
        assert got is not None and _bits([got]) == _bits([expected])


def _feature_set(windows: tuple[int, ...], lateness: int, cap_s: float) -> FeatureSet:
    return FeatureSet(
        name="t",
        version="1",
        value_field="payload.amount",
        allowed_lateness_ms=lateness,
        transforms=(),
        aggregates=(
            WindowStats("amount", windows=tuple((f"w{i}", ms) for i, ms in enumerate(windows))),
            SecondsSincePrevious("since", cap_s=cap_s),
            RatioToRunningMean("ratio"),
            HistoryCount("count"),
        ),
    )


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.tuples(st.integers(0, 100_000_000), AMOUNTS), max_size=60),
    evict_back=st.one_of(st.none(), st.integers(0, 100_000_000)),
    event_at=st.integers(-1_000_000, 110_000_000),
    value=AMOUNTS,
    windows=st.lists(st.integers(10_001, 90_000_000), min_size=1, max_size=4),
    lateness=st.integers(0, 10_000),
    cap_s=st.sampled_from([30 * 86_400.0, 1.0, 0.0, 86_400]),
)
def test_aggregates_are_the_python_aggregates_bit_for_bit(
    events: list[tuple[int, float]],
    evict_back: int | None,
    event_at: int,
    value: float,
    windows: list[int],
    lateness: int,
    cap_s: float,
) -> None:
    fs = _feature_set(tuple(windows), lateness, cap_s)
    history = EntityHistory()
    for offset, amount in events:
        history.add(T0 + offset, amount)
    if evict_back is not None and len(history):
        history.evict_before(history.watermark - evict_back)
    plan = fs._native_plan
    assert plan is not None
    got = _native.aggregates(
        history.times, history.values, history.partials, history.count_evicted,
        history.last_evicted, T0 + event_at, value, lateness, plan,
    )  # fmt: skip
    try:
        expected = fs.stateful(history, T0 + event_at, value)
    except (ValueError, OverflowError, ZeroDivisionError):
        assert got is None  # Python raises: the caller falls back and raises the same
        return
    if got is None:  # allowed only where the Python numbers are not all finite
        assert not all(map(math.isfinite, expected)) or not all(
            map(math.isfinite, [*history.values, *history.partials])
        )
        return
    assert got == _bits(expected)
    assert fs.stateful_bytes(history, T0 + event_at, value) == _bits(expected)


def test_an_unknown_aggregate_kind_keeps_the_whole_set_in_python() -> None:
    class Twice(HistoryCount):
        def compute(self, ctx: Any) -> list[float]:
            return [2.0 * ctx.settled_count]

    fs = FeatureSet(
        name="t", version="1", value_field="payload.amount", allowed_lateness_ms=0,
        transforms=(), aggregates=(HistoryCount("a"), Twice("b")),
    )  # fmt: skip
    assert fs._native_plan is None
    history = EntityHistory()
    history.add(T0, 1.0)
    assert fs.stateful_bytes(history, T0 + 1, 2.0) == _bits([math.log1p(1), 2.0])


# -- the processor with and without the kernel -------------------------------------------


def _records(events: list[dict[str, Any]]) -> list[Record]:
    return [
        Record("t.events", 0, i, e["event_time"], e["entity_id"].encode(), e, (), "Event")
        for i, e in enumerate(events)
    ]


def _stream() -> list[dict[str, Any]]:
    events = [e for e, _ in generate_events(1500, seed=5, n_entities=30, rate_per_s=0.3)]
    events[10] = {**events[10], "payload": {**events[10]["payload"], "amount": -1.0}}  # invalid
    events[20] = events[19]  # a duplicate
    late = dict(events[400])
    late["event_id"] = "late-one"
    late["event_time"] = events[399]["event_time"] - 3_600_000  # behind its entity
    events.insert(401, late)
    return events


def _vectors(codec: AvroCodec | None) -> tuple[list[bytes], list[bytes | None], int]:
    proc = FeaturesProcessor(
        feature_set=demo_feature_set(), output_topic="t.features", clock=lambda: 1.8e9
    )
    if codec is not None:
        proc.on_codec(codec)
    state = State(proc.stores)
    for store in state.stores:
        store.assign(0)
    proc.on_assigned([("t.events", 0)], state)
    events = _stream()
    values, raws, rejected = [], [], 0
    for i in range(0, len(events), 200):
        result = proc.process(_records(events[i : i + 200]), state)
        state.commit()
        rejected += len(result.rejections)
        for out in result.outputs:
            values.append(np.asarray(out.value["values"], dtype="<f8").tobytes())
            raws.append(out.raw_value)
    return values, raws, rejected


def test_the_processor_gives_the_same_vectors_with_and_without_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_kernel, _, rejected = _vectors(None)
    monkeypatch.setattr(native, "KERNEL", None)
    without, raws, rejected_too = _vectors(AvroCodec())
    assert rejected == rejected_too >= 2  # the invalid and the late event
    assert len(with_kernel) > 1000
    assert with_kernel == without
    assert raws == [None] * len(raws)  # no kernel: the runtime encodes with the codec


def test_the_processor_writes_the_codec_bytes_for_every_vector() -> None:
    codec = AvroCodec()
    proc = FeaturesProcessor(
        feature_set=demo_feature_set(), output_topic="t.features", clock=lambda: 1.8e9
    )
    proc.on_codec(codec)
    state = State(proc.stores)
    for store in state.stores:
        store.assign(0)
    result = proc.process(_records(_stream()[:600]), state)
    assert len(result.outputs) > 500
    for out in result.outputs:
        assert out.raw_value is not None
        assert out.raw_value == codec.encode(out.schema, out.value, topic=out.topic)


# -- the FeatureVector writer --------------------------------------------------------------

TEXT = st.text(max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            TEXT, TEXT, st.integers(-(2**63), 2**63 - 1),
            st.dictionaries(TEXT, TEXT, max_size=4),
        ),
        min_size=1, max_size=8,
    ),
    computed_at=st.integers(-(2**63), 2**63 - 1),
    names=st.lists(TEXT, max_size=5),
    width=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_writer_bytes_equal_the_codec(
    rows: list[tuple[str, str, int, dict[str, str]]],
    computed_at: int,
    names: list[str],
    width: int,
    seed: int,
) -> None:
    assume(not names or len(names) == width)
    codec = AvroCodec()
    constants = {"feature_set": "fs", "version": "3", "content_hash": "ab" * 32, "names": names}
    writer = VectorWriter.bind(codec, "t.features", **constants)
    assert writer is not None
    matrix = np.random.default_rng(seed).normal(size=(len(rows), width)) * 1e3
    matrix[0, :] = -0.0 if width else matrix[0, :]
    got = writer.encode(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], computed_at,
        matrix, [r[3] for r in rows],
    )  # fmt: skip
    assert got is not None
    for i, (event_id, entity_id, event_time, categories) in enumerate(rows):
        value = {
            "event_id": event_id, "entity_id": entity_id, "event_time": event_time,
            "computed_at": computed_at, "feature_set": "fs", "feature_set_version": "3",
            "feature_set_hash": "ab" * 32, "names": names, "values": matrix[i].tolist(),
            "categories": categories,
        }  # fmt: skip
        assert got[i] == codec.encode("FeatureVector", value, topic="t.features")


def test_writer_declines_what_it_does_not_write() -> None:
    writer = VectorWriter.bind(
        AvroCodec(), "t.features", feature_set="fs", version="1", content_hash="h", names=()
    )
    assert writer is not None
    matrix = np.zeros((1, 2))
    assert writer.encode(["\ud800"], ["e"], [1], 2, matrix, [{}]) is None  # lone surrogate
    assert writer.encode([1], ["e"], [1], 2, matrix, [{}]) is None  # type: ignore[list-item]
    assert writer.encode(["a"], ["e"], [2**64], 2, matrix, [{}]) is None  # not a long
    assert writer.encode(["a"], ["e"], [1], 2, np.zeros((2, 2)), [{}]) is None  # shape
    assert writer.encode(["a"], ["e"], [1], 2, np.zeros((1, 2), "f4"), [{}]) is None
