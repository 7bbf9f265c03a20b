"""A circuit breaker in front of the primary model.

closed --(N failures in a row)--> open --(cool-down elapsed)--> half-open
half-open --(probe batch succeeds)--> closed; half-open --(probe fails)--> open

Time comes from an injected monotonic clock, so tests drive it and nothing here sleeps.

>>> now = [0.0]
>>> breaker = CircuitBreaker("primary", failure_threshold=2, cooldown_s=10, clock=lambda: now[0])
>>> breaker.record_failure("error"); breaker.record_failure("error")
>>> breaker.state.value, breaker.allow()
('open', False)
>>> now[0] = 10.0
>>> breaker.allow(), breaker.state.value
(True, 'half_open')
>>> breaker.record_success(); breaker.state.value
'closed'
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


Transition = Callable[[str, BreakerState, BreakerState, str], None]
"""Called as ``(breaker name, old state, new state, why)`` on every state change."""


class CircuitBreaker:
    """Counts consecutive failures; while open, the protected route is skipped."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float],
        on_transition: Transition | None = None,
    ) -> None:
        if failure_threshold < 1 or cooldown_s < 0:
            raise ValueError("failure_threshold >= 1 and cooldown_s >= 0 are required")
        self.name = name
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May the protected route be tried now? Moves open -> half-open after the cool-down."""
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self._cooldown_s:
                return False
            self._move(BreakerState.HALF_OPEN, f"cool-down of {self._cooldown_s}s elapsed")
        return True

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, "probe succeeded")

    def record_failure(self, reason: str) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._open(f"probe failed: {reason}")
        elif self._state is BreakerState.CLOSED and self._failures >= self._threshold:
            self._open(f"{self._failures} consecutive failures, last: {reason}")

    def reset(self, why: str) -> None:
        """Back to closed with no failures (a new model version takes the route)."""
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, why)

    def _open(self, why: str) -> None:
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN, why)

    def _move(self, new: BreakerState, why: str) -> None:
        old, self._state = self._state, new
        log.warning(
            "circuit breaker %s: %s -> %s (%s)",
            self.name,
            old.value,
            new.value,
            why,
            extra={"breaker": self.name, "from_state": old.value, "to_state": new.value},
        )
        if self._on_transition is not None:
            self._on_transition(self.name, old, new, why)
