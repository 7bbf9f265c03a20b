"""The state store: pending changes, savepoints, commit/abort, restore and partitions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamml.errors import StreamMLError
from streamml.state import KeyValueStore, State


def store_with(*partitions: int) -> KeyValueStore:
    store = KeyValueStore("s")
    for p in partitions:
        store.assign(p)
    return store


def test_writes_are_pending_until_commit_and_vanish_on_abort() -> None:
    store = store_with(0)
    store.put(0, b"a", b"1")
    assert store.get(0, b"a") == b"1"
    assert store.size() == 0  # not committed yet
    assert list(store.pending()) == [(0, b"a", b"1")]
    store.abort()
    assert store.get(0, b"a") is None
    store.put(0, b"a", b"2")
    store.commit()
    assert store.get(0, b"a") == b"2"
    assert store.size(0) == 1
    assert list(store.pending()) == []


def test_delete_is_a_tombstone_in_pending_changes() -> None:
    store = store_with(1)
    store.restore(1, b"k", b"v")
    store.delete(1, b"k")
    assert store.get(1, b"k") is None
    assert list(store.pending()) == [(1, b"k", None)]
    store.commit()
    assert store.size(1) == 0


def test_savepoint_rollback_discards_only_later_changes() -> None:
    state = State(["x", "y"])
    x, y = state.store("x"), state.store("y")
    x.assign(0)
    y.assign(0)
    x.put(0, b"kept", b"1")
    point = state.savepoint()
    x.put(0, b"kept", b"2")
    y.put(0, b"gone", b"3")
    state.rollback(point)
    assert x.get(0, b"kept") == b"1"
    assert y.get(0, b"gone") is None
    point = state.savepoint()
    y.put(0, b"later", b"4")
    state.release(point)
    state.commit()
    assert y.get(0, b"later") == b"4"
    assert x.get(0, b"kept") == b"1"


def test_writing_to_a_partition_not_owned_is_an_error() -> None:
    store = store_with(0)
    with pytest.raises(StreamMLError, match="not assigned"):
        store.put(3, b"k", b"v")


def test_drop_forgets_a_partition_and_its_pending_changes() -> None:
    store = store_with(0, 1)
    store.restore(0, b"a", b"1")
    store.put(1, b"b", b"2")
    store.drop(1)
    assert store.partitions() == [0]
    assert list(store.pending()) == []
    store.commit()
    assert store.get(0, b"a") == b"1"


def test_items_merge_committed_and_pending() -> None:
    store = store_with(0)
    store.restore(0, b"a", b"1")
    store.restore(0, b"b", b"2")
    store.put(0, b"c", b"3")
    store.delete(0, b"a")
    assert dict(store.items(0)) == {b"b": b"2", b"c": b"3"}


def test_unknown_store_name_says_how_to_fix() -> None:
    with pytest.raises(StreamMLError, match="declare it"):
        State(["a"]).store("b")


ops = st.lists(
    st.tuples(st.sampled_from(["put", "delete"]), st.binary(max_size=2), st.binary(max_size=3)),
    max_size=40,
)


@given(committed=ops, aborted=ops)
def test_restoring_the_changelog_reproduces_the_committed_state(committed, aborted) -> None:
    """Replaying the changes written at commit gives the same store; aborted ones vanish."""
    store = store_with(0)
    changelog = []
    for batch, keep in ((committed, True), (aborted, False)):
        for op, key, value in batch:
            if op == "put":
                store.put(0, key, value)
            else:
                store.delete(0, key)
        if keep:
            changelog.extend(store.pending())
            store.commit()
        else:
            store.abort()
    restored = store_with(0)
    for partition, key, value in changelog:
        restored.restore(partition, key, value)
    assert dict(restored.items(0)) == dict(store.items(0))
