"""The batch executor without a broker: decode, isolation, rejections, offsets, halt, faults."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from confluent_kafka import Message

from streamml.codec import AvroCodec
from streamml.errors import (
    BrokerUnavailableError,
    RegistryRefusedError,
    RegistryUnavailableError,
)
from streamml.processor import Halt, Output, Processor, Record, Rejection, Result
from streamml.runtime import BatchExecutor, BatchOutcome, StreamRuntime, next_offsets
from streamml.settings import HttpSettings, KafkaSettings, RuntimeSettings
from streamml.state import State

CODEC = AvroCodec()


def label(event_id: str, value: int = 0) -> dict:
    return {"event_id": event_id, "entity_id": "c", "label": value, "labeled_at": 1}


def msg(offset: int, value: bytes | None, partition: int = 0) -> Message:
    return Message(
        topic="in", partition=partition, offset=offset, key=b"k", value=value,
        headers=[("h", b"1")], timestamp=(1, 1000 + offset),
    )  # fmt: skip


class Echo(Processor):
    """Counts records per key in a store; raises on label 13; rejects label 7; halts on 99."""

    stores = ("seen",)

    def process(self, records: Sequence[Record], state: State) -> Result:
        seen = state.store("seen")
        result = Result()
        for index, record in enumerate(records):
            value = record.value["label"]
            if value == 13:
                raise RuntimeError("unlucky")
            if value == 7:
                result.rejections.append(Rejection(record, "validation.seven", "no sevens"))
                continue
            if value == 99:
                result.halt = Halt("too many 99s", unconsumed=records[index:])
                return result
            seen.put(record.partition, record.value["event_id"].encode(), b"1")
            result.outputs.append(Output("out", "Label", record.value, key=record.key))
        return result


def executor(processor: Processor) -> BatchExecutor:
    state = State(processor.stores)
    for store in state.stores:
        store.assign(0)
        store.assign(1)
    return BatchExecutor(processor, {"in": "Label"}, CODEC, state)


def run(ex: BatchExecutor, batch: list[Message]) -> tuple:
    outcome = ex.run(batch)
    assert isinstance(outcome, BatchOutcome)
    return outcome.outputs, outcome.dead_letters, outcome.halt


def test_decode_failures_become_dead_letters_and_the_rest_is_processed() -> None:
    rt = executor(Echo())
    batch = [
        msg(0, CODEC.encode("Label", label("a"))),
        msg(1, b"garbage"),
        msg(2, None),
        msg(3, CODEC.encode("Label", label("b"))),
    ]
    outputs, dead, halt = run(rt, batch)
    assert [CODEC.decode(o.value, "Label")["event_id"] for o in outputs] == ["a", "b"]
    assert [(d.message.offset, d.stage) for d in dead] == [(1, "decode"), (2, "decode")]
    assert halt is None


def test_a_raising_record_is_isolated_and_its_state_changes_rolled_back() -> None:
    rt = executor(Echo())
    batch = [msg(i, CODEC.encode("Label", label(f"e{i}", 13 if i == 2 else 0))) for i in range(5)]
    outputs, dead, _ = run(rt, batch)
    assert [CODEC.decode(o.value, "Label")["event_id"] for o in outputs] == [
        "e0", "e1", "e3", "e4",
    ]  # fmt: skip
    assert len(dead) == 1 and dead[0].reason == "RuntimeError" and dead[0].stage == "process"
    assert "unlucky" in dead[0].text
    keys = {k for _, k, _ in rt.state.store("seen").pending()}
    assert keys == {b"e0", b"e1", b"e3", b"e4"}


def test_rejections_keep_their_reason_and_stage() -> None:
    rt = executor(Echo())
    outputs, dead, _ = run(rt, [msg(0, CODEC.encode("Label", label("x", 7)))])
    assert outputs == []
    assert [(d.reason, d.text, d.stage) for d in dead] == [
        ("validation.seven", "no sevens", "process")
    ]


def test_output_that_does_not_match_its_schema_is_isolated_as_a_processor_error() -> None:
    class Bad(Processor):
        def process(self, records: Sequence[Record], state: State) -> Result:
            return Result([Output("out", "Label", {"event_id": 1}) for _ in records])

    outputs, dead, _ = run(executor(Bad()), [msg(0, CODEC.encode("Label", label("a")))])
    assert outputs == [] and dead[0].reason == "EncodeError"


def test_offsets_advance_past_every_consumed_record_per_partition() -> None:
    batch = [msg(5, b""), msg(6, b""), msg(9, b"", partition=1)]
    offsets = {(p, o) for (_, p), o in next_offsets(batch, None).items()}
    assert offsets == {(0, 7), (1, 10)}


def test_halt_commits_only_up_to_the_first_unconsumed_record() -> None:
    rt = executor(Echo())
    batch = [msg(i, CODEC.encode("Label", label(f"e{i}", 99 if i == 3 else 0))) for i in range(6)]
    outputs, dead, halt = run(rt, batch)
    assert halt is not None and halt.reason == "too many 99s"
    assert len(outputs) == 3 and dead == []
    offsets = {(p, o) for (_, p), o in next_offsets(batch, halt).items()}
    assert offsets == {(0, 3)}


def test_halt_during_isolation_keeps_the_remaining_records_unconsumed() -> None:
    rt = executor(Echo())
    values = [0, 13, 99, 0]
    batch = [msg(i, CODEC.encode("Label", label(f"e{i}", v))) for i, v in enumerate(values)]
    outputs, dead, halt = run(rt, batch)
    assert len(outputs) == 1 and len(dead) == 1
    assert halt is not None
    assert sorted(r.offset for r in halt.unconsumed) == [2, 3]
    offsets = {(p, o) for (_, p), o in next_offsets(batch, halt).items()}
    assert offsets == {(0, 2)}


def test_forwarded_outputs_keep_the_input_bytes() -> None:
    class Forward(Processor):
        def process(self, records: Sequence[Record], state: State) -> Result:
            return Result([Output.forward(r, "copy") for r in records])

    data = CODEC.encode("Label", label("a"))
    outputs, _, _ = run(executor(Forward()), [msg(0, data)])
    assert outputs[0].value == data and outputs[0].headers == (("h", b"1"),)


@pytest.mark.parametrize("inputs", [{}])
def test_no_inputs_is_a_config_error(inputs: dict) -> None:
    from streamml.errors import ConfigError

    with pytest.raises(ConfigError, match="no input topics"):
        StreamRuntime(
            service="x", processor=Echo(), inputs=inputs, kafka=KafkaSettings(),
            settings=RuntimeSettings(), http=HttpSettings(), codec=CODEC,
        )  # fmt: skip


class RegistryDown(Processor):
    """Raises what the codec raises when the schema registry cannot be reached."""

    stores = ("seen",)

    def process(self, records: Sequence[Record], state: State) -> Result:
        state.store("seen").put(records[0].partition, b"touched", b"1")
        raise RegistryUnavailableError("schema registry unavailable: connection refused")


def test_an_infrastructure_fault_in_the_processor_propagates_with_no_dead_letter() -> None:
    ex = executor(RegistryDown())
    batch = [msg(i, CODEC.encode("Label", label(f"e{i}"))) for i in range(3)]
    with pytest.raises(RegistryUnavailableError):
        ex.run(batch)
    assert list(ex.state.store("seen").pending()) == []  # rolled back


def test_a_refused_schema_propagates_from_isolation_too() -> None:
    class RefusesLater(Processor):
        def process(self, records: Sequence[Record], state: State) -> Result:
            if len(records) > 1:
                raise RuntimeError("batch-level bug")  # sends the executor one by one
            raise RegistryRefusedError("schema registry refused (409)")

    batch = [msg(i, CODEC.encode("Label", label(f"e{i}"))) for i in range(3)]
    with pytest.raises(RegistryRefusedError):
        executor(RefusesLater()).run(batch)


def test_a_registry_outage_while_decoding_is_not_a_dead_letter() -> None:
    # A real registry client pointed at a closed port: connection refused, no retries.
    codec = AvroCodec(registry_url="http://127.0.0.1:1", registry_config={"max.retries": 0})
    ex = BatchExecutor(Echo(), {"in": "Label"}, codec, State(("seen",)))
    framed = b"\x00" + (12345).to_bytes(4, "big") + b"\x02a"
    with pytest.raises(RegistryUnavailableError):
        ex.run([msg(0, framed)])


class _Renewals:
    """A test double of the TransactionDriver: records each producer renewal; can fail."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.fail = False
        self.fresh = False  # has begun a transaction since its init

    def replace(self, reason: str) -> None:
        if self.fail:
            raise BrokerUnavailableError("init_transactions timed out")
        self.reasons.append(reason)


def test_the_first_transaction_after_a_broker_outage_runs_on_a_new_producer() -> None:
    from confluent_kafka import KafkaError

    rt = StreamRuntime(
        service="x", processor=Echo(), inputs={"in": "Label"}, kafka=KafkaSettings(),
        settings=RuntimeSettings(), http=HttpSettings(), codec=CODEC,
    )  # fmt: skip
    driver = _Renewals()
    rt._transactions = driver  # type: ignore[assignment]
    rt._renew_producer_after_outage()
    assert driver.reasons == []  # no outage: the producer stays
    rt._on_consumer_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    rt._renew_producer_after_outage()
    assert driver.reasons == []  # still unreachable: renewing now would only fail
    rt._unreachable = None  # what a record or the metadata probe does once a broker answers
    driver.fail = True
    with pytest.raises(BrokerUnavailableError):
        rt._renew_producer_after_outage()
    driver.fail = False
    rt._renew_producer_after_outage()  # the failed renewal is made again
    assert driver.reasons == ["a broker was unreachable since the last transaction"]
    rt._renew_producer_after_outage()
    assert len(driver.reasons) == 1  # once per outage, not per transaction

    # An outage read only after the watchdog replaced a stuck producer (the consumer is
    # not polled while the loop waits on the call): that producer, made once a broker
    # answered, has begun no transaction yet and is kept.
    rt._on_consumer_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    rt._unreachable = None
    driver.fresh = True
    rt._renew_producer_after_outage()
    assert len(driver.reasons) == 1
    driver.fresh = False  # its first transaction begins
    rt._renew_producer_after_outage()
    assert len(driver.reasons) == 1  # and the outage it was made after is forgotten
