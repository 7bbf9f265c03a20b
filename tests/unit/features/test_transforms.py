"""Every stateless transform and window function, and the feature set's identity."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.features.feature_set import (
    Bucketize,
    Clip,
    Cyclical,
    FeatureSet,
    HashedOneHot,
    Indicator,
    Log1p,
    OneHot,
    OptionalNumber,
    WindowStats,
    demo_feature_set,
    field_getter,
    stable_bucket,
    window_stats,
)
from streamml.synthetic import generate_events


def test_field_getter_reads_nested_paths_and_returns_none_when_absent() -> None:
    event = {"a": 1, "p": {"b": 2, "c": {"d": 3}}}
    assert field_getter("a")(event) == 1
    assert field_getter("p.b")(event) == 2
    assert field_getter("p.c.d")(event) == 3
    assert field_getter("p.x")(event) is None
    assert field_getter("a.b")(event) is None
    assert field_getter("p.c.d.e")(event) is None


def test_log1p_of_negative_and_missing_is_zero() -> None:
    t = Log1p("x", "x")
    assert t.compute(math.e - 1) == (pytest.approx(1.0),)
    assert t.compute(-5.0) == (0.0,)
    assert t.compute(None) == (0.0,)


def test_clip() -> None:
    t = Clip("x", "x", lower=1.0, upper=10.0)
    assert [t.compute(v)[0] for v in (0.0, 5.5, 11.0)] == [1.0, 5.5, 10.0]


def test_bucketize_boundaries_belong_to_the_bucket_above() -> None:
    t = Bucketize("x", "x", boundaries=(10.0, 50.0))
    assert [t.compute(v)[0] for v in (9.99, 10.0, 49.0, 50.0, 1e9)] == [0.0, 1.0, 1.0, 2.0, 2.0]


def test_cyclical_hour_of_day_wraps_at_midnight() -> None:
    t = Cyclical("h", "t", period_ms=86_400_000)
    assert t.names == ("h_sin", "h_cos")
    midnight = t.compute(0)
    assert midnight == (0.0, 1.0)
    six = t.compute(6 * 3_600_000)
    assert six[0] == pytest.approx(1.0) and six[1] == pytest.approx(0.0, abs=1e-12)
    before, after = t.compute(86_400_000 - 60_000), t.compute(86_400_000 + 60_000)
    assert math.dist(before, after) < 0.01
    assert t.compute(86_400_000 * 3 + 5) == t.compute(5)


def test_indicator() -> None:
    t = Indicator("x", "x")
    assert (t.compute(True), t.compute(False), t.compute(None)) == ((1.0,), (0.0,), (0.0,))


def test_optional_number_has_a_missing_flag_and_a_threshold_flag() -> None:
    t = OptionalNumber("age", "a", upper=100, at_most=1)
    assert t.names == ("age_log1p", "age_missing", "age_le_1")
    assert t.compute(None) == (0.0, 1.0, 0.0)
    assert t.compute(0) == (0.0, 0.0, 1.0)
    assert t.compute(1000) == (math.log1p(100), 0.0, 0.0)


def test_one_hot_with_other_bucket() -> None:
    t = OneHot("c", "c", values=("a", "b"))
    assert t.names == ("c=a", "c=b", "c=__other__")
    assert list(t.compute("b")) == [0.0, 1.0, 0.0]
    assert list(t.compute("zzz")) == [0.0, 0.0, 1.0]
    assert list(t.compute(None)) == [0.0, 0.0, 1.0]


def test_hashed_one_hot_is_stable_and_sets_exactly_one() -> None:
    t = HashedOneHot("c", "c", buckets=8)
    out = list(t.compute("DE"))
    assert sum(out) == 1.0 and out.index(1.0) == stable_bucket("DE", 8)
    # A fixed value: the bucket must never change between processes or versions.
    assert stable_bucket("DE", 32) == stable_bucket("DE", 32)
    assert [stable_bucket(c, 32) for c in ("DE", "FR", "NG")] == [
        int.from_bytes(__import__("hashlib").blake2b(c.encode(), digest_size=8).digest(), "little")
        % 32
        for c in ("DE", "FR", "NG")
    ]


def test_window_stats_empty_single_and_many() -> None:
    assert window_stats([]) == (0.0,) * 6
    assert window_stats([4.0]) == (1.0, 4.0, 4.0, 0.0, 4.0, 4.0)
    n, total, mean, std, lo, hi = window_stats([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert (n, total, mean, std, lo, hi) == (8.0, 40.0, 5.0, 2.0, 2.0, 9.0)


def test_window_stats_sum_is_exactly_rounded_whatever_the_order() -> None:
    values = [1e16, 1.0, -1e16, 0.1, 0.2, 0.3]
    assert window_stats(values)[1] == math.fsum(values)
    assert window_stats(list(reversed(values))) == window_stats(values)


def test_demo_feature_set_names_and_hash_are_stable() -> None:
    fs = demo_feature_set()
    assert len(fs.names) == len(set(fs.names)) == 88
    assert fs.names[-3:] == (
        "seconds_since_previous_log1p",
        "amount_to_running_mean",
        "history_count_log1p",
    )
    assert fs.content_hash == demo_feature_set().content_hash
    assert fs.retention_ms == 86_400_000 + 5_000


def test_any_definition_change_changes_the_hash() -> None:
    base = demo_feature_set()
    assert demo_feature_set(allowed_lateness_ms=1_000).content_hash != base.content_hash
    other = FeatureSet(
        name=base.name,
        version=base.version,
        value_field=base.value_field,
        allowed_lateness_ms=base.allowed_lateness_ms,
        transforms=base.transforms[:-1],
        aggregates=base.aggregates,
        categories=base.categories,
    )
    assert other.content_hash != base.content_hash


def test_lateness_must_be_shorter_than_the_shortest_window() -> None:
    with pytest.raises(ValueError, match="shorter than the shortest window"):
        FeatureSet(
            name="x",
            version="1",
            value_field="v",
            allowed_lateness_ms=60_000,
            transforms=(),
            aggregates=(WindowStats("v", windows=(("1m", 60_000),)),),
        )


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSet(
            name="x",
            version="1",
            value_field="v",
            allowed_lateness_ms=0,
            transforms=(Log1p("a", "v"), Clip("a", "v")),
            aggregates=(),
        )


_ANY_VALUE = (
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["", "pos", "atm", "DE", "5411", "x"])
)


def _bits(rows: Any) -> bytes:
    return np.asarray(rows, dtype=np.float64).tobytes()


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=40),  # a double field
        st.lists(st.integers(-(2**62), 2**62), max_size=40),  # a long field
        st.lists(st.none() | st.integers(-10, 50_000) | st.floats(-1e6, 1e6), max_size=40),
        st.lists(_ANY_VALUE, max_size=40),
    )
)
def test_every_transform_columns_equal_compute_bit_for_bit(values: list[Any]) -> None:
    # The batch path (columns) must give the very numbers of the per-event path (compute),
    # signed zeros and NaN included: the feature set hash promises the same features.
    for transform in demo_feature_set().transforms:
        try:
            expected = [list(transform.compute(v)) for v in values]
        except (TypeError, ValueError, OverflowError):
            with pytest.raises((TypeError, ValueError, OverflowError)):
                transform.columns(values)
            continue
        got = transform.columns(values)
        assert got.shape == (len(values), len(transform.names))
        assert _bits(got) == _bits(expected), transform.name


def test_stateless_matrix_rows_equal_stateless_per_event() -> None:
    fs = demo_feature_set()
    events = [e for e, _ in generate_events(500, seed=11)]
    events[3]["payload"]["device_age_days"] = None
    events[4]["payload"]["channel"] = "unknown-channel"
    matrix = fs.stateless_matrix(events)
    assert matrix.shape == (500, fs.stateless_width)
    assert _bits(matrix) == _bits([fs.stateless(e) for e in events])
    assert fs.stateless_matrix([]).shape == (0, fs.stateless_width)


def test_categories_many_equal_categories_of() -> None:
    fs = demo_feature_set()
    events = [e for e, _ in generate_events(300, seed=13)]
    events[5]["payload"]["country"] = None
    events[6]["payload"]["channel"] = 7
    del events[7]["payload"]["currency"]
    events[8]["payload"] = None
    many = fs.categories_many(events)
    assert many == [fs.categories_of(e) for e in events]
    assert many[5]["country"] == "" and many[6]["channel"] == "7" and many[8]["currency"] == ""
    assert fs.categories_many(events[:2]) == many[:2]  # remembered combinations: same answer
