"""Restart, abort and tampering: the state round-trips through bytes exactly."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import numpy as np
import pytest
import river
from river import drift

from services.drift.detectors import DetectorParams, PageHinkley, StreamDetectors
from services.drift.processor import MONITOR_STORE
from services.drift.statecodec import StateCodec, StateIntegrityError
from streamml.state import State
from tests.unit.drift.harness import Harness, make_processor, make_reference, stream_records

NAMES = ["f0", "f1", "f2", "f3"]


def _drifting(seed: int, n: int = 24_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 4))
    values[8_000:, 1] += 1.0
    values[16_000:, 1] -= 1.0
    return values


def _restart(harness: Harness, partitions: int = 2) -> Harness:
    """A new processor whose state is restored from the committed store bytes only."""
    fresh = Harness(make_processor(make_reference(), partitions=partitions), partitions)
    for old, new in zip(harness.state.stores, fresh.state.stores, strict=True):
        for p in old.partitions():
            for key, value in old.items(p):
                new.restore(p, key, bytes(value))
    fresh.windows_offset = harness.windows_offset
    fresh.fed = harness.fed
    return fresh


def test_restart_from_state_bytes_equals_an_uninterrupted_run() -> None:
    records = stream_records(_drifting(1), NAMES, partitions=2)
    whole = Harness(make_processor(make_reference(), partitions=2), 2)
    whole.feed_all(records, batch=300)
    assert {a["state"] for a in whole.alerts} >= {"open", "resolved"}

    first = Harness(make_processor(make_reference(), partitions=2), 2)
    cut = 10_950  # mid-window, mid-episode
    first.feed_all(records[:cut], batch=300)
    second = _restart(first)
    second.feed_all(records[cut:], batch=300)
    assert first.alerts + second.alerts == whole.alerts


def test_aborted_batch_is_replayed_from_committed_state() -> None:
    records = stream_records(_drifting(2), NAMES)
    whole = Harness(make_processor(make_reference()))
    whole.feed_all(records, batch=500)

    harness = Harness(make_processor(make_reference()))
    for start in range(0, len(records), 500):
        batch = records[start : start + 500]
        if start % 3000 == 0:  # this transaction aborts: state changes are discarded
            harness.processor.process(batch, harness.state)
            harness.state.abort()
        harness.feed(batch)
    assert harness.alerts == whole.alerts


def test_tampered_state_is_not_loaded(caplog: pytest.LogCaptureFixture) -> None:
    records = stream_records(_drifting(3, n=3_000), NAMES)
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(records[:2_000])
    store = harness.state.store(MONITOR_STORE)
    raw = store.get(0, b"features")
    assert raw is not None and raw.startswith(b"SD1")
    tampered = raw.replace(b'"seen":2000', b'"seen":9999')
    assert tampered != raw
    fresh = Harness(make_processor(make_reference()))
    fresh.state.store(MONITOR_STORE).restore(0, b"features", tampered)
    fresh.feed_all(records[2_000:])
    assert "rejected" in caplog.text
    saved = StateCodec(b"test-key").loads(fresh.state.store(MONITOR_STORE).get(0, b"features"))
    assert saved["monitor"]["seen"] == 1_000  # started afresh, did not trust the bytes


def test_state_signed_with_another_key_is_rejected() -> None:
    blob = StateCodec(b"a").dumps({"x": 1})
    with pytest.raises(StateIntegrityError):
        StateCodec(b"b").loads(blob)
    with pytest.raises(StateIntegrityError):
        StateCodec(b"a").loads(b"\x80\x04pickle")


@pytest.mark.parametrize("kswin_every", [0, 7])
def test_detectors_round_trip_mid_stream(kswin_every: int) -> None:
    params = DetectorParams(kswin_every=kswin_every)
    rng = np.random.default_rng(4)
    stream = np.r_[rng.normal(size=3_000), rng.normal(1.5, 1, size=3_000)].tolist()
    whole = StreamDetectors(params, seed=1)
    hits = whole.update_many(stream)
    assert {"adwin", "page_hinkley"} <= {name for _, name, _ in hits}

    split = StreamDetectors(params, seed=1)
    first = split.update_many(stream[:3_100])
    copy = StreamDetectors.from_dict(params, split.to_dict())
    second = [(i + 3_100, n, e) for i, n, e in copy.update_many(stream[3_100:])]
    assert first + second == hits
    assert copy.to_dict() == whole.to_dict()


def test_state_is_written_once_per_batch_per_partition() -> None:
    harness = Harness(make_processor(make_reference(), partitions=2), 2)
    harness.processor.process(stream_records(_drifting(5, 600), NAMES, partitions=2), harness.state)
    pending = list(harness.state.store(MONITOR_STORE).pending())
    assert sorted((p, k) for p, k, _ in pending) == [(0, b"features"), (1, b"features")]


def test_unassigned_state_store_partition_is_an_error() -> None:
    harness = Harness(make_processor(make_reference()))
    other = State(harness.processor.stores)
    with pytest.raises(Exception, match="not assigned"):
        harness.processor.process(stream_records(_drifting(6, 10), NAMES), other)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_page_hinkley_fires_on_the_same_values_as_rivers(seed: int) -> None:
    """Oracle: river's PageHinkley(alpha=1), one value at a time, on PIT-like streams
    with shifts up and down, in uneven batches (the vectorised one cuts nowhere)."""
    rng = np.random.default_rng(seed)
    stream = np.concatenate([
        rng.uniform(-1.7, 1.7, 20_000), rng.uniform(-1.7, 1.7, 3_000) + 0.8,
        rng.uniform(-1.7, 1.7, 3_000) - 0.6, rng.normal(size=20_000),
    ])  # fmt: skip
    for delta, threshold in ((0.25, 30.0), (0.2, 40.0), (0.05, 10.0)):
        oracle = drift.PageHinkley(min_instances=30, delta=delta, threshold=threshold, alpha=1.0)
        expected = []
        for i, value in enumerate(stream.tolist()):
            oracle.update(value)
            if oracle.drift_detected:
                expected.append((i, oracle._x_mean.get()))
        ours = PageHinkley(delta, threshold, 30)
        got: list[tuple[int, float]] = []
        start = 0
        for size in rng.integers(1, 700, size=len(stream)):
            got += [(start + i, m) for i, m in ours.update_many(stream[start : start + size])]
            start += int(size)
            if start >= len(stream):
                break
        assert [i for i, _ in got] == [i for i, _ in expected]
        assert len(expected) >= 3  # the changes were found (and the low threshold fires)
        assert np.allclose([m for _, m in got], [m for _, m in expected], atol=1e-9)


def test_page_hinkley_state_does_not_depend_on_batch_boundaries() -> None:
    values = np.random.default_rng(9).normal(size=5_000)
    whole = PageHinkley(0.25, 30.0, 30)
    whole.update_many(values)
    cut = PageHinkley(0.25, 30.0, 30)
    cut.update_many(values[:1_234])
    again = PageHinkley(0.25, 30.0, 30)
    again.load(cut.to_dict())
    again.update_many(values[1_234:])
    assert again.to_dict() == whole.to_dict()  # bit for bit, not approximately


def test_river_is_the_version_the_adwin_state_is_written_for() -> None:
    """ADWIN's state is river's own serialiser (``_helper.__getstate__``), a private API:
    river is pinned, and an upgrade must come with this test updated after checking
    that the round trip below still holds (otherwise every restart resets ADWIN)."""
    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("river")]
    installed = importlib.metadata.version("river")  # what pip installed, not a module attribute
    assert pins == [f"river=={installed}"], (
        f"river {installed} is installed but pyproject.toml pins {pins}: check that ADWIN "
        "state still round-trips (the tests below) before moving the pin"
    )
    assert river.__version__ == installed
    params = DetectorParams()
    values = np.random.default_rng(3).normal(size=2_000).tolist()
    detectors = StreamDetectors(params)
    detectors.update_many(values)
    state = detectors.to_dict()
    again = StreamDetectors.from_dict(params, state)
    assert again.adwin.width == detectors.adwin.width > 0  # not silently empty
    assert again.to_dict() == state


@pytest.mark.parametrize("cut", [1_500, 3_050, 4_500, 6_050])
def test_restored_adwin_detects_what_the_uninterrupted_one_detects(cut: int) -> None:
    """ADWIN alone (its window is the state river keeps privately): restored at ``cut``
    from :meth:`StreamDetectors.to_dict`, it fires on the same values with the same
    estimates as the detector that never stopped, on a seeded stream with a change up and
    one back (cuts before, inside and just after each)."""
    params = DetectorParams(page_hinkley=False, spread=False, kswin_every=0)
    rng = np.random.default_rng(17)
    stream = np.r_[rng.normal(size=3_000), rng.normal(0.8, 1, size=3_000),
                   rng.normal(size=3_000)].tolist()  # fmt: skip
    whole = StreamDetectors(params).update_many(stream)
    after_cut = [hit for hit in whole if hit[0] >= cut]
    assert after_cut and {name for _, name, _ in after_cut} == {"adwin"}

    first = StreamDetectors(params)
    first.update_many(stream[:cut])
    restored = StreamDetectors.from_dict(params, first.to_dict())
    resumed = [(i + cut, n, e) for i, n, e in restored.update_many(stream[cut:])]
    assert resumed == after_cut
    # The oracle can fail: a detector that starts empty at the cut fires elsewhere.
    empty = [(i + cut, n, e) for i, n, e in StreamDetectors(params).update_many(stream[cut:])]
    assert empty != after_cut
