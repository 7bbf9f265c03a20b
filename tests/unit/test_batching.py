"""The adaptive batch-closing policy without a broker: a queue that fills as time passes."""

from __future__ import annotations

import pytest

from streamml.batching import collect_batch


class ArrivingQueue:
    """A consumer's fetched-message queue on a fake clock: ``arrivals`` are (time, message).

    ``fetch(n, timeout)`` behaves as librdkafka's ``consume``: it returns once ``n``
    messages are queued or the timeout ran out, advancing the clock by the time it waited.
    """

    def __init__(self, arrivals: list[tuple[float, int]]) -> None:
        self.arrivals = sorted(arrivals)
        self.now = 0.0
        self.calls: list[tuple[int, float]] = []

    def fetch(self, n: int, timeout: float) -> list[int]:
        self.calls.append((n, timeout))
        deadline = self.now + timeout
        due = [a for a in self.arrivals if a[0] <= self.now]
        if len(due) < n:
            later = [a for a in self.arrivals if self.now < a[0] <= deadline]
            needed = n - len(due)
            if len(later) >= needed:
                self.now = later[needed - 1][0]
                due += later[:needed]
            else:
                self.now = deadline
                due += later
        taken = due[:n]
        for item in taken:
            self.arrivals.remove(item)
        return [message for _, message in taken]


def test_thin_input_closes_the_batch_without_waiting_out_the_timer() -> None:
    queue = ArrivingQueue([(0.010, 1), (0.050, 2), (0.090, 3)])
    batch = collect_batch(queue.fetch, max_records=500, wait_s=0.1)
    assert batch == [1]
    assert queue.now == pytest.approx(0.010)  # the fixed policy would return at 0.100


def test_a_backlog_fills_the_batch_to_its_cap() -> None:
    queue = ArrivingQueue([(0.0, i) for i in range(1200)])
    sizes = []
    while batch := collect_batch(queue.fetch, max_records=500, wait_s=0.1):
        sizes.append(len(batch))
    assert sizes == [500, 500, 200]
    assert queue.now == pytest.approx(0.1)  # only the final, empty poll waited


def test_the_batch_takes_everything_already_queued_in_arrival_order() -> None:
    queue = ArrivingQueue([(0.0, 1), (0.0, 2), (0.02, 3), (0.03, 4)])
    queue.now = 0.025
    assert collect_batch(queue.fetch, max_records=10, wait_s=0.1) == [1, 2, 3]
    assert queue.now == pytest.approx(0.025)  # nothing was awaited: a record was queued


def test_drain_calls_never_wait_and_never_ask_past_the_cap() -> None:
    queue = ArrivingQueue([(0.0, i) for i in range(7)])
    collect_batch(queue.fetch, max_records=5, wait_s=0.25)
    assert queue.calls[0] == (1, 0.25)
    assert all(timeout == 0.0 for _, timeout in queue.calls[1:])
    assert sum(n for n, _ in queue.calls[1:2]) == 4


def test_nothing_within_the_wait_gives_an_empty_batch() -> None:
    queue = ArrivingQueue([(0.5, 1)])
    assert collect_batch(queue.fetch, max_records=10, wait_s=0.1) == []
    assert queue.now == pytest.approx(0.1)


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        collect_batch(ArrivingQueue([]).fetch, max_records=0, wait_s=0.1)
