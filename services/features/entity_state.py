"""Per-entity event history for event-time window aggregates, and its explicit byte format.

An :class:`EntityHistory` keeps, for one entity, the (event_time, value) pairs of its
accepted events that a window can still need, sorted by (time, value), plus the
*settled summary* of everything evicted: count, last event time and the exact sum (as
Shewchuk partials, so a total does not depend on when an event moved from the list to
the summary). With that, every aggregate the feature set asks for is a pure function of
the *set* of accepted events, never of their arrival order; see
docs/decisions/features-event-time-windows.md.

The byte format is a fixed little-endian header followed by the arrays; no pickle, so
state restored from a changelog can never run code.

>>> h = EntityHistory()
>>> h.add(1_000, 5.0); h.add(3_000, 7.0)
>>> EntityHistory.from_bytes(h.to_bytes()).settled_before(10_000)
(2, 12.0, 3000)
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from bisect import bisect_left

from streamml.errors import StreamMLError

FORMAT_VERSION = 1
# version, watermark, summary count, summary last time, n partials, n events
_HEADER = struct.Struct("<BqqqHI")
NO_TIME = -(2**63)
_SWAP = sys.byteorder != "little"  # arrays are stored little-endian on every machine


class StateFormatError(StreamMLError):
    """Stored entity state cannot be read (unknown version or truncated bytes)."""


def _add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to a list of non-overlapping partials (Shewchuk's algorithm).

    The partials hold the exact sum of everything added; ``math.fsum(partials)`` is that
    sum correctly rounded, whatever order the values were added in.
    """
    i = 0
    for partial in partials:
        y = partial
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


class EntityHistory:
    """The retained events and settled summary of one entity (mutable, not thread-safe)."""

    __slots__ = ("_partials", "count_evicted", "last_evicted", "times", "values", "watermark")

    def __init__(self) -> None:
        self.watermark = NO_TIME
        """Largest event time accepted for this entity (``NO_TIME`` before the first)."""
        self.count_evicted = 0
        self.last_evicted = NO_TIME
        self._partials: list[float] = []
        self.times: array[int] = array("q")
        self.values: array[float] = array("d")

    # -- updates ----------------------------------------------------------------------

    def add(self, event_time: int, value: float) -> None:
        """Record an accepted event (kept sorted by time, then value)."""
        times = self.times
        if (
            not times
            or event_time > times[-1]
            or (event_time == times[-1] and value >= self.values[-1])
        ):
            times.append(event_time)
            self.values.append(value)
        else:
            # Out of order: find the slot among equal times by value, so ties sort the same
            # whatever the arrival order.
            lo = bisect_left(times, event_time)
            hi = bisect_left(times, event_time + 1, lo)
            slot = lo + bisect_left(self.values[lo:hi], value) if hi > lo else lo
            times.insert(slot, event_time)
            self.values.insert(slot, value)
        self.watermark = max(self.watermark, event_time)

    def evict_before(self, horizon: int) -> None:
        """Move events with time < ``horizon`` into the settled summary (oldest first)."""
        n = bisect_left(self.times, horizon)
        if not n:
            return
        for value in self.values[:n]:
            _add_exact(self._partials, value)
        self.count_evicted += n
        self.last_evicted = self.times[n - 1]
        del self.times[:n]
        del self.values[:n]

    def cap(self, max_events: int) -> int:
        """Evict the oldest events beyond ``max_events`` (a guard for runaway entities).

        Returns how many were evicted early; windows of this entity are then no longer
        exact, which the caller reports.
        """
        extra = len(self.times) - max_events
        if extra <= 0:
            return 0
        self.evict_before(self.times[extra - 1] + 1)
        return extra

    # -- queries --------------------------------------------------------------------

    @property
    def partials(self) -> list[float]:
        """The exact sum of the evicted values, as non-overlapping partials (read only)."""
        return self._partials

    def window(self, start: int, end: int) -> tuple[array[float], int]:
        """Values with ``start <= time < end`` (sorted by time, value) and their count."""
        lo = bisect_left(self.times, start)
        hi = bisect_left(self.times, end, lo)
        return self.values[lo:hi], hi - lo

    def settled_before(self, end: int) -> tuple[int, float, int]:
        """(count, exact sum, last time) of every accepted event with time < ``end``."""
        return self.settled_up_to(bisect_left(self.times, end))

    def settled_up_to(self, hi: int) -> tuple[int, float, int]:
        """(count, exact sum, last time) of the evicted events and ``times[:hi]``."""
        count = self.count_evicted + hi
        if hi:
            partials = self._partials
            total = math.fsum([*partials, *self.values[:hi]] if partials else self.values[:hi])
            last = self.times[hi - 1]
        else:
            total = math.fsum(self._partials)
            last = self.last_evicted
        return count, total, last

    def __len__(self) -> int:
        return len(self.times)

    # -- bytes ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(
            FORMAT_VERSION,
            self.watermark,
            self.count_evicted,
            self.last_evicted,
            len(self._partials),
            len(self.times),
        )
        partials = struct.pack(f"<{len(self._partials)}d", *self._partials)
        return b"".join((header, partials, _le_bytes(self.times), _le_bytes(self.values)))

    @classmethod
    def from_bytes(cls, data: bytes) -> EntityHistory:
        try:
            version, watermark, count, last, n_partials, n_events = _HEADER.unpack_from(data)
        except struct.error as exc:
            raise StateFormatError(f"entity state too short ({len(data)} bytes)") from exc
        if version != FORMAT_VERSION:
            raise StateFormatError(f"entity state format {version} is not {FORMAT_VERSION}")
        expected = _HEADER.size + 8 * n_partials + 16 * n_events
        if len(data) != expected:
            raise StateFormatError(f"entity state is {len(data)} bytes, expected {expected}")
        history = cls()
        history.watermark = watermark
        history.count_evicted = count
        history.last_evicted = last
        offset = _HEADER.size
        history._partials = list(struct.unpack_from(f"<{n_partials}d", data, offset))
        offset += 8 * n_partials
        history.times.frombytes(data[offset : offset + 8 * n_events])
        offset += 8 * n_events
        history.values.frombytes(data[offset:])
        if _SWAP:
            history.times.byteswap()
            history.values.byteswap()
        return history


def _le_bytes(values: array[float] | array[int]) -> bytes:
    if not _SWAP:
        return values.tobytes()
    swapped = array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()
