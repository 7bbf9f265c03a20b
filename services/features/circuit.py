"""The data-quality fail-stop circuit: stop making features when input looks corrupt.

The circuit watches whether each record was valid, over a sliding window of the last
``window`` records. When at least ``min_records`` were seen and the invalid share passes
``threshold``, it *opens*: the processor returns a :class:`~streamml.processor.Halt`, the
runtime pauses and reports not-ready, and no valid record after the trip becomes a
feature vector until the circuit closes again:

* an operator's ``POST /resume`` (``streamml features resume``) closes it, with a fresh
  window (the operator fixed or accepted the upstream problem);
* with ``probe_after_s`` set, the runtime resumes by itself after that delay and the
  circuit is *half-open*: the next ``probe_records`` records are processed as a probe;
  (default: ``min_records``); if their invalid share passes the threshold it opens
  again, otherwise it closes.

>>> c = FailStopCircuit(window=10, threshold=0.5, min_records=4)
>>> [c.record(invalid=True) is not None for _ in range(4)]
[False, False, False, True]
>>> c.state.name
'OPEN'
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class CircuitState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class FailStopCircuit:
    """Sliding-window invalid-share breaker (in memory; a restart starts it closed)."""

    def __init__(
        self,
        *,
        window: int = 1000,
        threshold: float = 0.5,
        min_records: int = 100,
        probe_after_s: float | None = None,
        probe_records: int | None = None,
    ) -> None:
        probe_records = min_records if probe_records is None else probe_records
        if window < 1 or not 0.0 <= threshold < 1.0:
            raise ValueError("need window >= 1 and 0 <= threshold < 1")
        if not 1 <= min_records <= window or not 1 <= probe_records <= window:
            raise ValueError("need 1 <= min_records, probe_records <= window")
        self.window = window
        self.threshold = threshold
        self.min_records = min_records
        self.probe_after_s = probe_after_s
        self.probe_records = probe_records
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._invalid = 0
        self._state = CircuitState.CLOSED
        self._last_reason = ""
        self.trip_reason = ""

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def invalid_share(self) -> float:
        return self._invalid / len(self._outcomes) if self._outcomes else 0.0

    def record(self, *, invalid: bool, reason: str = "") -> str | None:
        """Count one record; returns why the circuit tripped, or None if it did not."""
        if self._state is CircuitState.OPEN:
            return self.trip_reason
        outcomes = self._outcomes
        if len(outcomes) == outcomes.maxlen and outcomes[0]:
            self._invalid -= 1
        outcomes.append(invalid)
        if invalid:
            self._invalid += 1
            self._last_reason = reason or self._last_reason
        needed = self.probe_records if self._state is CircuitState.HALF_OPEN else self.min_records
        seen = len(outcomes)
        if seen < needed:
            # Open early when the probe cannot end below the threshold any more.
            if (
                self._state is CircuitState.HALF_OPEN
                and self._invalid > self.threshold * self.probe_records
            ):
                return self._trip()
            return None
        if self._invalid / seen > self.threshold:
            return self._trip()
        if self._state is CircuitState.HALF_OPEN:
            self._state = CircuitState.CLOSED
        return None

    def _trip(self) -> str:
        share = self._invalid / len(self._outcomes)
        probing = " during the probe" if self._state is CircuitState.HALF_OPEN else ""
        self._state = CircuitState.OPEN
        self.trip_reason = (
            f"invalid share {share:.2f} over the last {len(self._outcomes)} records passed "
            f"{self.threshold:.2f}{probing} (latest reason: {self._last_reason or 'unknown'})"
        )
        return self.trip_reason

    def snapshot(self) -> tuple[tuple[bool, ...], int, CircuitState, str, str]:
        """The circuit's state, to :meth:`restore` if a batch is processed again."""
        return (
            tuple(self._outcomes),
            self._invalid,
            self._state,
            self._last_reason,
            self.trip_reason,
        )

    def restore(self, snapshot: tuple[tuple[bool, ...], int, CircuitState, str, str]) -> None:
        outcomes, self._invalid, self._state, self._last_reason, self.trip_reason = snapshot
        self._outcomes.clear()
        self._outcomes.extend(outcomes)

    def resume(self, *, probe: bool) -> None:
        """Close (operator) or half-open (timed probe) the circuit, with a fresh window."""
        self._outcomes.clear()
        self._invalid = 0
        self._state = CircuitState.HALF_OPEN if probe else CircuitState.CLOSED
