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
import time
from collections.abc import Callable
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return None


def can_release_free_memory() -> bool:
    """True where the C library can trim its heap (glibc)."""
    return _malloc_trim() is not None


def release_free_memory() -> bool:
    """Return the free pages of the C heap to the OS; False where the C library cannot.

    >>> isinstance(release_free_memory(), bool)
    True
    """
    trim = _malloc_trim()
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
