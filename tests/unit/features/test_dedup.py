"""The dedup store: digests, event-time expiry, the index rebuild and memory per key."""

from __future__ import annotations

import hashlib

from services.features.dedup import DIGEST_BYTES, PARTITION_MAX_KEY, DedupStore
from streamml.state import State

HOUR = 3_600_000


def _store(retention_ms: int = 2 * HOUR) -> tuple[State, DedupStore]:
    state = State(["dedup"])
    state.store("dedup").assign(0)
    state.store("dedup").assign(1)
    return state, DedupStore(state.store("dedup"), retention_ms=retention_ms)


def test_digest_is_16_bytes_and_deterministic() -> None:
    assert len(DedupStore.digest("a")) == DIGEST_BYTES
    assert DedupStore.digest("a") == DedupStore.digest("a") != DedupStore.digest("b")
    assert len(PARTITION_MAX_KEY) != DIGEST_BYTES


def test_seen_is_per_partition_and_survives_commit() -> None:
    state, dedup = _store()
    key = dedup.digest("e1")
    dedup.remember(0, key, 1_000)
    assert dedup.seen(0, key) and not dedup.seen(1, key)
    state.commit()
    assert dedup.seen(0, key)


def test_aborted_transaction_forgets_the_key_and_partition_max() -> None:
    state, dedup = _store()
    key = dedup.digest("e1")
    dedup.remember(0, key, 1_000)
    dedup.advance(0, 1_000)
    state.abort()
    assert not dedup.seen(0, key)
    assert dedup.partition_max(0) is None


def test_keys_expire_by_event_time_not_before_retention() -> None:
    state, dedup = _store(retention_ms=2 * HOUR)
    old, new = dedup.digest("old"), dedup.digest("new")
    dedup.remember(0, old, 10 * HOUR + 5)
    dedup.advance(0, 10 * HOUR + 5)
    dedup.remember(0, new, 12 * HOUR)
    assert dedup.advance(0, 12 * HOUR) == 0  # 'old' is only ~2 h behind: kept
    assert dedup.seen(0, old)
    expired = dedup.advance(0, 13 * HOUR)  # old's hour bucket ended 2 h before 13:00
    assert expired == 1
    assert not dedup.seen(0, old) and dedup.seen(0, new)
    state.commit()
    assert not dedup.seen(0, old)
    assert dedup.partition_max(0) == 13 * HOUR


def test_partition_max_only_moves_forward() -> None:
    _, dedup = _store()
    dedup.advance(0, 5_000)
    dedup.advance(0, 1_000)
    assert dedup.partition_max(0) == 5_000


def test_rebuild_indexes_restored_keys_so_they_still_expire() -> None:
    state, dedup = _store(retention_ms=HOUR)
    key = dedup.digest("k")
    dedup.remember(0, key, 0)
    dedup.advance(0, 0)
    state.commit()
    # A new instance sees only the restored store (as after a restart).
    restored = State(["dedup"])
    backing = restored.store("dedup")
    for k, v in state.store("dedup").items(0):
        backing.restore(0, k, v)
    fresh = DedupStore(backing, retention_ms=HOUR)
    fresh.rebuild(0)
    assert fresh.retained(0) == 1 and fresh.partition_max(0) == 0
    assert fresh.advance(0, 3 * HOUR) == 1
    assert not fresh.seen(0, key)


def test_equal_minutes_share_one_value_object() -> None:
    state, dedup = _store()
    a, b = dedup.digest("a"), dedup.digest("b")
    dedup.remember(0, a, 60_000 + 1)
    dedup.remember(0, b, 60_000 + 59_000)
    state.commit()
    store = state.store("dedup")
    assert store.get(0, a) is store.get(0, b)


def test_digest_is_the_documented_blake2b_so_restored_keys_still_match() -> None:
    # Keys restored from a changelog written by an older build must be found again.
    for event_id in ("a", "0b7c5a2e-9b61-4d59-8a7e-3f0f4e1c2d11", "é"):
        expected = hashlib.blake2b(
            event_id.encode("utf-8"), digest_size=16, person=b"streamml.dedup"
        ).digest()
        assert DedupStore.digest(event_id) == expected
