"""release_free_memory gives freed C-heap pages back: RSS falls after it, and only then."""

from __future__ import annotations

import ctypes.util
import sys

import pytest

from streamml.memory import release_free_memory, rss_bytes, settle_table

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
    reason="malloc_trim is glibc's (Linux)",
)


def _rss_mib() -> float:
    rss = rss_bytes()
    assert rss is not None
    return rss / 2**20


def test_freed_heap_under_a_live_object_is_returned_by_the_trim_not_before() -> None:
    # 100 MB of 1 kB objects (malloc's heap, not pymalloc's arenas), then live objects
    # above them, so glibc cannot shrink the heap from its top by itself.
    block = [bytes(1000) + bytes([i % 256]) for i in range(100_000)]
    above = [bytes(1000) + bytes([i % 256]) for i in range(50)]
    peak = _rss_mib()
    del block
    freed = _rss_mib()
    assert freed > peak - 20, "glibc returned the pages by itself: the test proves nothing"
    assert release_free_memory() is True
    assert _rss_mib() < freed - 50
    assert len(above) == 50


def test_a_settled_table_is_the_size_churn_would_give_it_and_keeps_its_contents() -> None:
    keys = [i.to_bytes(16, "big") for i in range(92_000)]
    built = {k: b"v" for k in keys}  # as a restore builds a store: inserts from nothing
    churned = dict(built)
    for i in range(3 * len(keys)):  # a store under churn: the oldest key out, a new one in
        del churned[(i).to_bytes(16, "big")]
        churned[(i + len(keys)).to_bytes(16, "big")] = b"v"
    assert sys.getsizeof(built) < sys.getsizeof(churned)  # the restored table is one size short
    before = list(built.items())
    assert settle_table(built) > 0
    assert sys.getsizeof(built) == sys.getsizeof(churned)
    assert list(built.items()) == before  # same keys, values and order
