"""Which model serves which traffic: the route table, its atomic swap, canary split and guard.

The control follower thread builds a new :class:`RouteTable` when an operator promotes a
version and publishes it with :meth:`ModelRoutes.publish`; the processor takes
:meth:`ModelRoutes.current` once at the start of each micro-batch, so a batch is scored
by one consistent set of models and a swap happens only between batches.

>>> canary_bucket(b"card-42") == canary_bucket(b"card-42")
True
>>> 0.0 <= canary_bucket(b"card-42") < 1.0
True
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.scorer.model import OnnxModel

ROLES = ("primary", "fallback", "shadow", "canary")


@dataclass(frozen=True)
class RouteEntry:
    """A model in a role, and the ``model.control`` offset that put it there (-1: settings)."""

    model: OnnxModel
    revision: int = -1


@dataclass(frozen=True)
class RouteTable:
    """An immutable snapshot of the models per role."""

    primary: RouteEntry | None = None
    fallback: RouteEntry | None = None
    shadow: RouteEntry | None = None
    canary: RouteEntry | None = None
    canary_share: float = 0.0

    def get(self, role: str) -> RouteEntry | None:
        entry: RouteEntry | None = getattr(self, role)
        return entry

    def with_role(
        self, role: str, entry: RouteEntry | None, *, canary_share: float | None = None
    ) -> RouteTable:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        fields: dict[str, Any] = {role: entry}
        if canary_share is not None:
            fields["canary_share"] = canary_share
        return replace(self, **fields)

    def describe(self) -> str:
        parts = []
        for role in ROLES:
            entry = self.get(role)
            if entry is not None:
                share = f"@{self.canary_share:g}" if role == "canary" else ""
                parts.append(f"{role}={entry.model.label}{share}")
        return " ".join(parts) or "(empty)"

    def models(self) -> list[OnnxModel]:
        return [entry.model for role in ROLES if (entry := self.get(role)) is not None]


class ModelRoutes:
    """The current route table, swapped atomically; read by the processor, written by control."""

    def __init__(self, table: RouteTable | None = None) -> None:
        self._lock = threading.Lock()
        self._table = table or RouteTable()
        self._generation = 0

    def current(self) -> tuple[int, RouteTable]:
        """``(generation, table)``; the generation grows with every publish."""
        with self._lock:
            return self._generation, self._table

    def publish(self, table: RouteTable) -> int:
        with self._lock:
            self._table = table
            self._generation += 1
            return self._generation


def canary_bucket(key: bytes) -> float:
    """A stable number in [0, 1) for an entity key (BLAKE2b; same in every process and run)."""
    digest = hashlib.blake2b(key, digest_size=8, person=b"streamml-canary").digest()
    return int.from_bytes(digest, "big") / 2.0**64


class CanaryMonitor:
    """Guards a canary: breaches when its error rate or slow-batch rate passes a bound.

    Counts per record over the last ``window_records`` canary records; judges only after
    ``min_records``, so a single early failure does not roll back a good candidate.
    """

    def __init__(
        self,
        *,
        max_error_rate: float,
        max_latency_ms: float,
        max_slow_rate: float,
        min_records: int,
        window_records: int,
    ) -> None:
        self._max_error_rate = max_error_rate
        self._max_latency_ms = max_latency_ms
        self._max_slow_rate = max_slow_rate
        self._min_records = min_records
        self._window_records = window_records
        # (records, failed, slow) per canary batch, oldest first.
        self._batches: deque[tuple[int, bool, bool]] = deque()
        self._records = 0

    def reset(self) -> None:
        self._batches.clear()
        self._records = 0

    def record(self, records: int, *, failed: bool, latency_ms: float) -> None:
        self._batches.append((records, failed, latency_ms > self._max_latency_ms))
        self._records += records
        while self._batches and self._records - self._batches[0][0] >= self._window_records:
            self._records -= self._batches.popleft()[0]

    def breach(self) -> tuple[str, str] | None:
        """``(bound, description)`` of a breached bound, or None while the canary is healthy.

        ``bound`` is ``error_rate`` or ``latency`` (a metric label).
        """
        if self._records < self._min_records:
            return None
        failed = sum(n for n, bad, _ in self._batches if bad)
        slow = sum(n for n, _, is_slow in self._batches if is_slow)
        error_rate = failed / self._records
        slow_rate = slow / self._records
        if error_rate > self._max_error_rate:
            return "error_rate", (
                f"error_rate {error_rate:.3f} > {self._max_error_rate:g} over "
                f"{self._records} records"
            )
        if slow_rate > self._max_slow_rate:
            return "latency", (
                f"{slow_rate:.3f} of {self._records} records in batches slower than "
                f"{self._max_latency_ms:g} ms (bound {self._max_slow_rate:g})"
            )
        return None
