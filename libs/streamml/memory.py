"""Giving freed heap back to the operating system.

A restore or a catch-up burst allocates a peak of short-lived objects. CPython frees them,
but glibc keeps the freed pages of its heaps mapped, so a process's RSS steps up at every
restore and never comes down (the soak measured the performance service at 308 MiB RSS
with 115 MiB of live Python objects; ``malloc_trim(0)`` took it to 196 MiB). The runtime
calls :func:`release_free_memory` once after a restore, and :class:`HeapTrimmer` trims
again when the RSS has grown by a share since the last trim (a catch-up after a broker
restart, a peak of a store's pruning cycle), at most once per interval: one call costs up
to ~0.5 s on a loaded machine, too much to pay on a short timer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any


@functools.cache
def _libc(function: str) -> Any:
    """A function of the C library, or None where it has none by that name (musl, macOS
    have no malloc_trim; mallinfo2 is glibc 2.33+)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), function)
    except (OSError, AttributeError):
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def heap_bytes() -> dict[str, int] | None:
    """The C heap by kind, or None where the C library cannot say (not glibc 2.33+).

    ``in_use``: malloc's chunks in use in its heaps; ``free``: freed chunks it keeps
    (what a trim can give back, in whole pages); ``mmapped``: chunks too large for the
    heaps, each its own mapping (returned when freed). What the RSS holds beyond these,
    besides code and stacks, is mostly CPython's own arenas for small objects.

    >>> usage = heap_bytes()
    >>> usage is None or sorted(usage) == ["free", "in_use", "mmapped"]
    True
    """
    call = _libc("mallinfo2")
    if call is None:
        return None
    call.restype = _MallInfo2
    info = call()
    return {"in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)


def fix_mmap_threshold(size: int) -> bool:
    """Serve every allocation of ``size`` bytes or more from a mapping of its own, always.

    glibc starts at 128 KiB and raises the threshold to the size of each mapped block freed
    (up to 32 MiB), so the tables of large dictionaries (a state store's, 10-40 MiB) soon
    come from the heap instead: freed at a resize, they stay resident until a trim. A fixed
    threshold keeps them mapped, returned to the OS the moment they are freed. Left alone
    where ``MALLOC_MMAP_THRESHOLD_`` is set (the operator's own choice) or the C library is
    not glibc; returns whether it was set.

    >>> isinstance(fix_mmap_threshold(256 * 1024), bool)
    True
    """
    if size <= 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, size))


def settle_table(table: dict[Any, Any]) -> int:
    """Resize ``table`` now to the size that inserts and deletes would settle it at later.

    CPython sizes a dictionary's table at a resize by three times its live keys, and a
    dictionary under churn (a state store: keys expire, new ones come) is resized whenever
    its entries run out. One built from nothing, as a restore builds a store, can stop one
    size short: in a soak the performance service restored 92 k join keys per partition
    into tables of 2^18 slots, and churn doubled each to 2^19 minutes later (+10 MiB of RSS
    per partition, long after the restore). Moving each key to the end (pop and insert again)
    uses up entries without changing the live count, so the resize comes now, at the size
    churn would choose; each pass moves every key once, so they end in their order. The
    contents and order are unchanged. Returns the moves made.

    >>> table = {i: str(i) for i in range(1000)}
    >>> settle_table(table) > 0, list(table) == list(range(1000))
    (True, True)
    """
    live = len(table)
    if live == 0:
        return 0
    size = sys.getsizeof(table)
    # A resize must come within the entries of a table sized for the live keys: 2/3 of the
    # smallest power of two at least three times that (bounded if one came at the same size).
    limit = (1 << (3 * live - 1).bit_length()) * 2 // 3 + 1
    moves = 0
    pop = table.pop
    while moves < limit:
        for key in list(table):  # a whole pass: the keys end in their order
            table[key] = pop(key)
        moves += live
        if sys.getsizeof(table) != size:
            break
    return moves


def can_release_free_memory() -> bool:
    """True where the C library can trim its heap (glibc)."""
    return _libc("malloc_trim") is not None


def release_free_memory() -> bool:
    """Return the free pages of the C heap to the OS; False where the C library cannot.

    >>> isinstance(release_free_memory(), bool)
    True
    """
    trim = _libc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


def rss_bytes() -> int | None:
    """This process's resident set size, or None where /proc is not there (not Linux)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Trims the C heap when the RSS has grown by ``growth`` since the last trim.

    The RSS is read every ``check_interval_s``; a trim needs ``min_interval_s`` since the
    previous one. The baseline is the RSS right after the last trim, so live state that
    really grows raises the baseline instead of trimming on every check.

    >>> sizes = iter([100, 130, 90])
    >>> t = HeapTrimmer(growth=0.2, check_interval_s=0, min_interval_s=0,
    ...                 rss=lambda: next(sizes), trim=lambda: True)
    >>> t.maybe_trim()   # the first reading sets the baseline (100)
    >>> t.maybe_trim()   # 130 > 120: trimmed, 90 is the new baseline
    (130, 90)
    """

    def __init__(
        self,
        *,
        growth: float,
        check_interval_s: float = 30.0,
        min_interval_s: float = 300.0,
        rss: Callable[[], int | None] = rss_bytes,
        trim: Callable[[], object] = release_free_memory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.growth = growth
        self.check_interval_s = check_interval_s
        self.min_interval_s = min_interval_s
        self._rss = rss
        self._trim = trim
        self._clock = clock
        self._baseline: int | None = None
        self._check_due = 0.0
        self._last_trim = float("-inf")

    def maybe_trim(self) -> tuple[int, int] | None:
        """Trim if due; returns (RSS before, RSS after) when it trimmed."""
        if self.growth <= 0:
            return None
        now = self._clock()
        if now < self._check_due:
            return None
        self._check_due = now + self.check_interval_s
        before = self._rss()
        if before is None:
            return None
        if self._baseline is None:
            self._baseline = before
            return None
        grown = before > self._baseline * (1 + self.growth)
        if not grown or now - self._last_trim < self.min_interval_s:
            return None
        self._trim()
        self.trimmed()
        return before, self._baseline or before

    def trimmed(self) -> None:
        """Record a trim made elsewhere (after a restore): the RSS now is the baseline."""
        self._last_trim = self._clock()
        self._baseline = self._rss()
