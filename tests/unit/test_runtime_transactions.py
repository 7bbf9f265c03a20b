"""The transaction driver's producer replacement: a replaced producer is released (its
librdkafka handle destroyed) once its last call has returned, on a thread of its own, and
never while a thread is still blocked in it."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from typing import Any

import pytest

from streamml.runtime import transactions
from streamml.runtime.transactions import StuckProducerError, TransactionDriver
from streamml.settings import KafkaSettings, RuntimeSettings


class _Producer:
    """A test double of confluent_kafka.Producer: send_offsets_to_transaction blocks until
    ``block`` is set, as librdkafka's does after an outage (#5456, #5511)."""

    def __init__(self, released: dict[int, str], index: int) -> None:
        self.index = index
        self.block: threading.Event | None = None
        # Records which thread dropped the last reference (where librdkafka's destroy runs).
        weakref.finalize(self, lambda: released.__setitem__(index, threading.current_thread().name))

    def init_transactions(self, timeout: float) -> None:
        pass

    def begin_transaction(self) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 0

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        if self.block is not None:
            self.block.wait(30)


def _started_driver() -> TransactionDriver:
    """A driver over the monkeypatched make_producer, started."""
    driver = TransactionDriver(
        KafkaSettings(), RuntimeSettings(), transactional_id="t", client_id="c",
        on_backpressure=lambda: None, on_abort=lambda: None, stop=threading.Event(),
    )  # fmt: skip
    driver.start()
    return driver


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, what
        gc.collect()
        time.sleep(0.01)


def test_a_replaced_producer_is_released_once_its_call_returned_never_under_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    released: dict[int, str] = {}
    made: list[weakref.ref[_Producer]] = []

    def make_producer(*args: Any, **kwargs: Any) -> _Producer:
        producer = _Producer(released, len(made))
        made.append(weakref.ref(producer))
        return producer

    monkeypatch.setattr(transactions, "make_producer", make_producer)
    monkeypatch.setattr(transactions, "SEND_OFFSETS_DEADLINE_S", 0.2)
    driver = _started_driver()

    # Producer 0 blocks in send_offsets past the watchdog: replaced, but held.
    stuck = made[0]()
    assert stuck is not None
    blocked = threading.Event()
    stuck.block = blocked
    del stuck
    with pytest.raises(StuckProducerError):
        driver.send_offsets([], None)
    driver.replace("transactional producer is stuck")
    time.sleep(0.2)
    gc.collect()
    assert 0 not in released and made[0]() is not None  # its thread is still inside it

    # Producer 1, idle (its call returned), replaced after an outage: released at once,
    # on the release thread, not the loop's.
    driver.send_offsets([], None)
    driver.replace("a broker was unreachable since the last transaction")
    _until(lambda: 1 in released, "the idle replaced producer was released")
    assert released[1] == "producer-release"
    assert 0 not in released

    # Producer 0's call returns: the next transaction's begin releases it.
    blocked.set()
    _until(lambda: not any(t.name == "send-offsets" for t in threading.enumerate()),
           "the blocked call returned")  # fmt: skip
    assert 0 not in released
    assert driver.fresh  # producer 2: initialised, no transaction begun yet
    driver.begin()
    assert not driver.fresh
    _until(lambda: 0 in released, "the stuck producer was released after its call returned")
    assert released[0] == "producer-release"
    assert 2 not in released and made[2]() is not None  # the current producer stays
    driver.close(1)


@pytest.mark.parametrize("answers", [True, False])
def test_a_blocked_call_is_given_up_sooner_while_a_broker_answers(
    monkeypatch: pytest.MonkeyPatch, answers: bool
) -> None:
    released: dict[int, str] = {}
    producer = _Producer(released, 0)
    blocked = producer.block = threading.Event()
    monkeypatch.setattr(transactions, "make_producer", lambda *a, **k: producer)
    monkeypatch.setattr(transactions, "SEND_OFFSETS_SUSPECT_S", 0.3)
    monkeypatch.setattr(transactions, "SEND_OFFSETS_DEADLINE_S", 2.0)
    driver = _started_driver()
    asked: list[float] = []

    def broker_answers() -> bool:
        asked.append(time.monotonic())
        return answers

    started = time.monotonic()
    with pytest.raises(StuckProducerError) as raised:
        driver.send_offsets([], None, broker_answers)
    took = time.monotonic() - started
    if answers:  # given up at the first question, after SEND_OFFSETS_SUSPECT_S
        assert "while a broker answers" in str(raised.value)
        assert len(asked) == 1 and asked[0] - started >= 0.3 and took < 2.0  # before the deadline
    else:  # asked once a second until the deadline, which still holds
        assert "did not return in 2s" in str(raised.value)
        assert len(asked) >= 1 and took >= 2.0
    blocked.set()

    # A call that returns is never given up, whatever the broker says.
    producer.block = None
    driver.send_offsets([], None, broker_answers)
