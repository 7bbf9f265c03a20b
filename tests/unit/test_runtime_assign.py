"""A fault while restoring newly assigned partitions is retried, not the end of the process.

The runtime's rebalance callback runs inside ``consume``; a broker that goes away while it
restores state used to end the process with exit code 1. These tests drive the callback
with a stand-in consumer (a test double: no broker is involved) and a restore that fails
the way the real one does when the broker is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from streamml.codec import AvroCodec
from streamml.errors import BrokerUnavailableError, ConfigError
from streamml.processor import Processor, Record, Result
from streamml.runtime import StreamRuntime, provisioning
from streamml.settings import HttpSettings, KafkaSettings, RuntimeSettings
from streamml.state import State


class Counting(Processor):
    stores = ("seen",)

    def process(self, records: Sequence[Record], state: State) -> Result:
        return Result()


class ConsumerDouble:
    """Answers the two calls the assignment callback makes."""

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return partitions

    def pause(self, partitions: list[TopicPartition]) -> None:
        pass


def runtime(max_attempts: int) -> StreamRuntime:
    settings = RuntimeSettings(
        max_attempts=max_attempts, backoff_initial_s=0.01, backoff_max_s=0.02
    )
    return StreamRuntime(
        service="x", processor=Counting(), inputs={"in": "Label"}, kafka=KafkaSettings(),
        settings=settings, http=HttpSettings(), codec=AvroCodec(),
    )  # fmt: skip


def flaky_restore(failures: int, exc: Exception) -> tuple[list[list[int]], Any]:
    calls: list[list[int]] = []

    def restore(numbers: list[int], *, state: State, **_: Any) -> None:
        calls.append(list(numbers))
        store = state.store("seen")
        if len(calls) <= failures:
            store.restore(numbers[0], b"half-restored", b"1")  # left by a restore cut short
            raise exc
        for number in numbers:
            store.restore(number, b"restored", b"1")

    return calls, restore


def test_a_broker_fault_while_restoring_is_retried_and_the_partitions_are_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, restore = flaky_restore(2, BrokerUnavailableError("broker transport failure"))
    monkeypatch.setattr(provisioning, "restore", restore)
    rt = runtime(max_attempts=5)
    rt._on_assign(ConsumerDouble(), [TopicPartition("in", 0), TopicPartition("in", 1)])  # type: ignore[arg-type]
    assert calls == [[0, 1]] * 3
    assert rt.not_ready_reason() is None  # the fault is cleared once the restore went through
    assert rt.status()["partitions"] == ["in:0", "in:1"]
    assert rt.state.store("seen").get(0, b"restored") == b"1"
    assert rt.state.store("seen").get(0, b"half-restored") is None  # each attempt starts empty


def test_restore_faults_past_max_attempts_still_end_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, restore = flaky_restore(10, BrokerUnavailableError("broker transport failure"))
    monkeypatch.setattr(provisioning, "restore", restore)
    rt = runtime(max_attempts=3)
    with pytest.raises(BrokerUnavailableError):
        rt._on_assign(ConsumerDouble(), [TopicPartition("in", 0)])  # type: ignore[arg-type]
    assert len(calls) == 3


def test_a_configuration_fault_while_restoring_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, restore = flaky_restore(10, ConfigError("changelog topic has the wrong cleanup policy"))
    monkeypatch.setattr(provisioning, "restore", restore)
    rt = runtime(max_attempts=5)
    with pytest.raises(ConfigError):
        rt._on_assign(ConsumerDouble(), [TopicPartition("in", 0)])  # type: ignore[arg-type]
    assert len(calls) == 1
