"""Entity history: windows, settled summary, eviction and the byte format."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.features.entity_state import NO_TIME, EntityHistory, StateFormatError
from services.features.feature_set import demo_feature_set


def test_window_is_half_open_start_inclusive_end_exclusive() -> None:
    h = EntityHistory()
    for t, v in ((100, 1.0), (200, 2.0), (300, 3.0)):
        h.add(t, v)
    assert list(h.window(200, 300)[0]) == [2.0]
    assert list(h.window(100, 301)[0]) == [1.0, 2.0, 3.0]
    assert h.window(301, 400)[1] == 0


def test_out_of_order_adds_keep_time_then_value_order() -> None:
    h = EntityHistory()
    for t, v in ((300, 3.0), (100, 9.0), (100, 1.0), (200, 2.0), (100, 5.0)):
        h.add(t, v)
    assert list(h.times) == [100, 100, 100, 200, 300]
    assert list(h.values) == [1.0, 5.0, 9.0, 2.0, 3.0]
    assert h.watermark == 300


def test_eviction_moves_events_to_the_settled_summary() -> None:
    h = EntityHistory()
    for t in range(10):
        h.add(t * 1000, 0.1)
    before = h.settled_before(100_000)
    h.evict_before(5_000)
    assert len(h) == 5
    assert h.settled_before(100_000) == before == (10, math.fsum([0.1] * 10), 9000)
    assert h.settled_before(3_000) == (5, math.fsum([0.1] * 5), 4000)  # all evicted ones
    assert EntityHistory().settled_before(1) == (0, 0.0, NO_TIME)


def test_cap_evicts_the_oldest_beyond_the_limit() -> None:
    h = EntityHistory()
    for t in range(10):
        h.add(t, float(t))
    assert h.cap(4) == 6
    assert list(h.times) == [6, 7, 8, 9]
    assert h.settled_before(100)[0] == 10


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.floats(-1e12, 1e12, allow_nan=False)),
        max_size=40,
    ),
    st.integers(0, 10_000),
)
def test_bytes_round_trip(events: list[tuple[int, float]], horizon: int) -> None:
    h = EntityHistory()
    for t, v in events:
        h.add(t, v)
    h.evict_before(horizon)
    back = EntityHistory.from_bytes(h.to_bytes())
    assert back.to_bytes() == h.to_bytes()
    assert back.settled_before(20_000) == h.settled_before(20_000)
    assert list(back.times) == list(h.times) and list(back.values) == list(h.values)


@pytest.mark.parametrize("data", [b"", b"\x02" + b"\x00" * 40, EntityHistory().to_bytes() + b"x"])
def test_unreadable_state_raises(data: bytes) -> None:
    with pytest.raises(StateFormatError):
        EntityHistory.from_bytes(data)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e15, 1e15, allow_nan=False), min_size=1, max_size=30), st.data())
def test_settled_sum_does_not_depend_on_when_events_were_evicted(
    values: list[float], data: st.DataObject
) -> None:
    """The exact partials make the total independent of the list/summary split."""
    times = list(range(len(values)))
    split = data.draw(st.integers(0, len(values)))
    h1, h2 = EntityHistory(), EntityHistory()
    for t, v in zip(times, values, strict=True):
        h1.add(t, v)
        h2.add(t, v)
    h2.evict_before(split)
    assert h1.settled_before(len(values)) == h2.settled_before(len(values))
    assert h1.settled_before(len(values))[1] == math.fsum(values)


# -- the property the windows are built for: arrival order within the lateness bound ---

LATENESS = 5_000


def _arrival_orders(draw: st.DrawFn) -> tuple[list[tuple[int, float]], list[int]]:
    n = draw(st.integers(1, 40))
    gap = st.one_of(st.integers(0, 2 * LATENESS), st.integers(0, 900_000))
    gaps = draw(st.lists(gap, min_size=n, max_size=n))
    amounts = draw(
        st.lists(
            st.floats(0.01, 1e6, allow_nan=False, allow_infinity=False), min_size=n, max_size=n
        )
    )
    times, t = [], 1_793_491_200_000
    for gap in gaps:
        t += gap
        times.append(t)
    jitter = draw(st.lists(st.integers(0, LATENESS), min_size=n, max_size=n))
    # Arrival by time + jitter <= lateness: no event arrives more than LATENESS behind
    # the newest one already seen, so none is late.
    order = sorted(range(n), key=lambda i: (times[i] + jitter[i], i))
    return list(zip(times, amounts, strict=True)), order


arrivals = st.composite(_arrival_orders)


def _features_by_event(events: list[tuple[int, float]], order: list[int]) -> dict[int, list[float]]:
    fs = demo_feature_set(allowed_lateness_ms=LATENESS)
    h = EntityHistory()
    out = {}
    for i in order:
        t, v = events[i]
        assert t >= h.watermark - LATENESS or h.watermark == NO_TIME
        out[i] = fs.stateful(h, t, v)
        h.add(t, v)
        h.evict_before(h.watermark - fs.retention_ms)
        h = EntityHistory.from_bytes(h.to_bytes())
    return out


@settings(max_examples=150, deadline=None)
@given(arrivals())
def test_shuffled_within_lateness_gives_the_same_aggregates_as_in_order(
    case: tuple[list[tuple[int, float]], list[int]],
) -> None:
    events, shuffled = case
    in_order = sorted(range(len(events)), key=lambda i: (events[i][0], i))
    assert _features_by_event(events, shuffled) == _features_by_event(events, in_order)


def test_reference_window_values_on_a_random_stream() -> None:
    rng = random.Random(3)
    fs = demo_feature_set(allowed_lateness_ms=LATENESS)
    h = EntityHistory()
    past: list[tuple[int, float]] = []
    t = 0
    for _ in range(300):
        t += rng.randint(0, 900_000)
        v = round(rng.uniform(1, 500), 2)
        got = dict(zip(fs.names[-21:], fs.stateful(h, t, v), strict=True))
        ten = [a for (s, a) in past if t - 600_000 <= s < t - LATENESS]
        day = [a for (s, a) in past if t - 86_400_000 <= s < t - LATENESS]
        assert got["amount_10m_count"] == len(ten)
        assert got["amount_10m_sum"] == math.fsum(ten)
        assert got["amount_24h_max"] == (max(day) if day else 0.0)
        settled = [a for (s, a) in past if s < t - LATENESS]
        if settled:
            assert got["amount_to_running_mean"] == v / (math.fsum(settled) / len(settled))
        h.add(t, v)
        h.evict_before(h.watermark - fs.retention_ms)
        past.append((t, v))
