"""Restart, abort and tampering: the state round-trips through bytes exactly."""

from __future__ import annotations

import numpy as np
import pytest

from services.drift.detectors import DetectorParams, StreamDetectors
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
