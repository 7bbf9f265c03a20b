"""The fail-stop circuit: stop a service when too many of its records fail.

One mechanism, used twice: the features service opens it on its invalid-input share
(upstream corruption should stop before it reaches a model), and the runtime opens one in
every service on its dead-letter share (a processor bug or a bad deployment should halt
the service, not turn the stream into dead letters; see
docs/decisions/runtime-fault-taxonomy.md).

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

from collections import Counter, deque
from collections.abc import Iterable
from enum import IntEnum
from itertools import repeat


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
        label: str = "invalid",
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
        self.label = label
        # None for a valid record, else the reason it failed (for the top classes).
        self._outcomes: deque[str | None] = deque(maxlen=window)
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
        if len(outcomes) == outcomes.maxlen and outcomes[0] is not None:
            self._invalid -= 1
        outcomes.append((reason or "unknown") if invalid else None)
        if invalid:
            self._invalid += 1
            self._last_reason = reason or self._last_reason
        return self._decide()

    def record_batch(self, valid: int, invalid_reasons: Iterable[str]) -> str | None:
        """Count a batch: ``valid`` good records and one reason per failed record.

        Returns why the circuit tripped, or None. The window keeps the batch's outcomes
        (valid ones first); the decision is taken once, on the whole batch.
        """
        if self._state is CircuitState.OPEN:
            return self.trip_reason
        reasons = list(invalid_reasons)
        outcomes = self._outcomes
        outcomes.extend(repeat(None, min(valid, self.window)))
        outcomes.extend(reasons)
        self._invalid = len(outcomes) - outcomes.count(None)
        if reasons:
            self._last_reason = reasons[-1]
        return self._decide()

    def _decide(self) -> str | None:
        outcomes = self._outcomes
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
            f"{self.label} share {share:.2f} over the last {len(self._outcomes)} records passed "
            f"{self.threshold:.2f}{probing} (latest reason: {self._last_reason or 'unknown'})"
        )
        return self.trip_reason

    def top_reasons(self, n: int = 3) -> list[tuple[str, int]]:
        """The most frequent failure reasons in the window, most frequent first."""
        return Counter(o for o in self._outcomes if o is not None).most_common(n)

    def snapshot(self) -> tuple[tuple[str | None, ...], int, CircuitState, str, str]:
        """The circuit's state, to :meth:`restore` if a batch is processed again."""
        return (
            tuple(self._outcomes),
            self._invalid,
            self._state,
            self._last_reason,
            self.trip_reason,
        )

    def restore(self, snapshot: tuple[tuple[str | None, ...], int, CircuitState, str, str]) -> None:
        outcomes, self._invalid, self._state, self._last_reason, self.trip_reason = snapshot
        self._outcomes.clear()
        self._outcomes.extend(outcomes)

    def resume(self, *, probe: bool) -> None:
        """Close (operator) or half-open (timed probe) the circuit, with a fresh window."""
        self._outcomes.clear()
        self._invalid = 0
        self._state = CircuitState.HALF_OPEN if probe else CircuitState.CLOSED
