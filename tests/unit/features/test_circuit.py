"""The fail-stop circuit: trip on the invalid share, operator resume, cool-down probe."""

from __future__ import annotations

import pytest

from services.features.circuit import CircuitState, FailStopCircuit


def test_does_not_trip_before_min_records_or_below_threshold() -> None:
    c = FailStopCircuit(window=100, threshold=0.5, min_records=10)
    for _ in range(9):
        assert c.record(invalid=True) is None
    c = FailStopCircuit(window=100, threshold=0.5, min_records=10)
    for _ in range(200):
        assert c.record(invalid=False) is None
        assert c.record(invalid=True) is None  # exactly 50%: not above
    assert c.state is CircuitState.CLOSED


def test_trips_when_the_sliding_window_share_passes_the_threshold() -> None:
    c = FailStopCircuit(window=10, threshold=0.5, min_records=10)
    for _ in range(10):
        c.record(invalid=False)
    results = [c.record(invalid=True, reason="validation.range") for _ in range(6)]
    assert results[:5] == [None] * 5
    assert results[5] is not None and "validation.range" in results[5]
    assert c.state is CircuitState.OPEN
    assert c.record(invalid=False) == results[5]  # stays open until resumed


def test_operator_resume_closes_with_a_fresh_window() -> None:
    c = FailStopCircuit(window=10, threshold=0.5, min_records=2)
    c.record(invalid=True)
    assert c.record(invalid=True) is not None
    c.resume(probe=False)
    assert c.state is CircuitState.CLOSED and c.invalid_share == 0.0
    assert c.record(invalid=True) is None  # one record is below min_records again


def test_probe_closes_on_clean_data() -> None:
    c = FailStopCircuit(window=100, threshold=0.5, min_records=2, probe_records=5)
    c.record(invalid=True)
    c.record(invalid=True)
    c.resume(probe=True)
    assert c.state is CircuitState.HALF_OPEN
    for _ in range(4):
        assert c.record(invalid=False) is None
        assert c.state is CircuitState.HALF_OPEN
    c.record(invalid=True)  # 1 of 5: fine
    assert c.state is CircuitState.CLOSED


def test_probe_reopens_on_dirty_data_as_soon_as_it_cannot_pass() -> None:
    c = FailStopCircuit(window=100, threshold=0.5, min_records=2, probe_records=10)
    c.record(invalid=True)
    c.record(invalid=True)
    c.resume(probe=True)
    outcomes = [c.record(invalid=True) for _ in range(6)]
    assert outcomes[:5] == [None] * 5
    assert outcomes[5] is not None and "probe" in outcomes[5]
    assert c.state is CircuitState.OPEN


@pytest.mark.parametrize(
    "kwargs", [{"window": 0}, {"threshold": 1.0}, {"min_records": 0}, {"probe_records": 10**6}]
)
def test_bad_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FailStopCircuit(**kwargs)  # type: ignore[arg-type]


def test_snapshot_restore_undoes_counting() -> None:
    c = FailStopCircuit(window=10, threshold=0.5, min_records=3)
    c.record(invalid=True)
    saved = c.snapshot()
    c.record(invalid=True)
    assert c.record(invalid=True) is not None
    c.restore(saved)
    assert c.state is CircuitState.CLOSED and c.invalid_share == 1.0
    assert c.record(invalid=False) is None
