"""BulkHistogram: a batch of observations exposes what prometheus_client's Histogram does."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streamml.metrics import BulkHistogram

BUCKETS = (0.01, 0.05, 0.1, 0.25, 1, 2.5, 60, 86_400)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out[(sample.name, sample.labels.get("le", ""))] = sample.value
    return out


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from([0.0, 0.01, 0.05, 1.0, 86_400.0, 1e9])
            | st.floats(0, 1e6, allow_nan=False),
            max_size=50,
        ),
        max_size=5,
    )
)
def test_bulk_histogram_exposes_the_same_samples_as_histogram(batches: list[list[float]]) -> None:
    plain_registry, bulk_registry = CollectorRegistry(), CollectorRegistry()
    plain = Histogram("age_seconds", "doc", buckets=BUCKETS, registry=plain_registry)
    bulk = BulkHistogram("age_seconds", "doc", buckets=BUCKETS, registry=bulk_registry)
    for batch in batches:
        for value in batch:
            plain.observe(value)
        bulk.observe_many(np.array(batch, dtype=np.float64))
    expected, got = _samples(plain_registry), _samples(bulk_registry)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key  # sums add in another order


def test_bulk_histogram_text_format_and_single_observe() -> None:
    registry = CollectorRegistry()
    bulk = BulkHistogram("streamml_x_seconds", "Feature age.", buckets=(1, 5), registry=registry)
    bulk.observe(0.5)
    bulk.observe_many([1.0, 3.0, 7.0])
    bulk.observe_many([])
    text = generate_latest(registry).decode()
    assert 'streamml_x_seconds_bucket{le="1.0"} 2.0' in text
    assert 'streamml_x_seconds_bucket{le="5.0"} 3.0' in text
    assert 'streamml_x_seconds_bucket{le="+Inf"} 4.0' in text
    assert "streamml_x_seconds_count 4.0" in text
    assert "streamml_x_seconds_sum 11.5" in text
    with pytest.raises(ValueError, match="finite bucket"):
        BulkHistogram("y", "doc", buckets=(math.inf,), registry=None)
