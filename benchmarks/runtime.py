"""Throughput of the exactly-once runtime against raw confluent-kafka loops, same broker, same run.

Three contenders copy the same N Event records from one input topic to their own output
topic, each with its own consumer group, micro-batches of the same size:

- ``runtime``: a no-op processor on :class:`streamml.runtime.StreamRuntime` (decode, the
  processor forwards each record's bytes, transaction with outputs and offsets);
  ``runtime_reencode`` also encodes each output again from its decoded value.
- ``raw_txn``: a hand-written confluent-kafka transactional passthrough (KIP-447 loop,
  bytes copied as they are, no Avro).
- ``raw_alo``: at-least-once passthrough (idempotent producer, auto-commit).

Each figure is records/s from the first record consumed to the last offsets committed.
Run against the broker in KAFKA_BOOTSTRAP_SERVERS:

    python benchmarks/runtime.py --records 100000 --partitions 4

The last line is one JSON object with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamml.codec import AvroCodec
from streamml.processor import Output, Processor, Record, Result
from streamml.settings import HttpSettings, KafkaSettings, RuntimeSettings
from streamml.state import State
from streamml.synthetic import generate_events

BATCH = 500


def _bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def _create(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    for future in futures.values():
        future.result()
    time.sleep(0.5)


def prepare_input(bootstrap: str, n_records: int, partitions: int) -> str:
    """Create a fresh input topic and fill it with ``n_records`` encoded Events."""
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    topic = f"{prefix}events"
    _create(bootstrap, [topic, f"{topic}.dlq"], partitions)
    codec = AvroCodec()
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    for event, _ in generate_events(n_records, seed=1):
        while True:
            try:
                producer.produce(topic, codec.encode("Event", event), event["entity_id"].encode())
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(120)
    return topic


def _wait_committed(
    bootstrap: str, group: str, topic: str, total: int, stop: threading.Event
) -> float:
    """Block until ``group`` committed offsets summing to ``total``; return that time."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    tps = [TopicPartition(topic, p) for p in partitions]
    try:
        while not stop.is_set():
            committed = consumer.committed(tps, timeout=10)
            if sum(max(tp.offset, 0) for tp in committed) >= total:
                return time.perf_counter()
            time.sleep(0.02)
    finally:
        consumer.close()
    return time.perf_counter()


class _Forward(Processor):
    """The no-op: every record goes out byte-identical to ``output`` (decoded, not re-encoded)."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.first_call: float | None = None

    def process(self, records: Sequence[Record], state: State) -> Result:
        if self.first_call is None:
            self.first_call = time.perf_counter()
        out = self.output
        return Result(outputs=[Output.forward(r, out) for r in records])


class _Reencode(_Forward):
    """Like the no-op, but each output is encoded again from its decoded value."""

    def process(self, records: Sequence[Record], state: State) -> Result:
        if self.first_call is None:
            self.first_call = time.perf_counter()
        out = self.output
        return Result(outputs=[Output(out, "Event", r.value, key=r.key) for r in records])


def measure_noop_runtime(
    bootstrap: str,
    n_records: int,
    partitions: int = 4,
    input_topic: str | None = None,
    *,
    reencode: bool = False,
) -> float:
    """Records/s of the no-op processor through the runtime (exactly-once).

    The no-op decodes every record (as every service does) and forwards its bytes; with
    ``reencode`` it also encodes the decoded value again, as a processor emitting a new
    record of the same size would.
    """
    from streamml.runtime import StreamRuntime

    topic = input_topic or prepare_input(bootstrap, n_records, partitions)
    output = f"{topic}.out-runtime-{uuid.uuid4().hex[:4]}"
    _create(bootstrap, [output], partitions)
    group = f"{topic}-runtime-{uuid.uuid4().hex[:4]}"
    processor = _Reencode(output) if reencode else _Forward(output)
    runtime = StreamRuntime(
        service="bench-noop",
        processor=processor,
        inputs={topic: "Event"},
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        settings=RuntimeSettings(group_id=group, instance_id="bench", batch_max_records=BATCH),
        http=HttpSettings(port=0),
    )
    gave_up = threading.Event()

    def run() -> None:
        runtime.run()
        gave_up.set()  # run() returns only when stopped or after it gave up

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    done = _wait_committed(bootstrap, group, topic, n_records, gave_up)
    if gave_up.is_set():
        raise RuntimeError("the runtime stopped before committing every record; see its log")
    runtime.stop()
    thread.join(30)
    assert processor.first_call is not None
    return n_records / (done - processor.first_call)


def _raw_loop(
    bootstrap: str, topic: str, n_records: int, partitions: int, *, transactional: bool
) -> float:
    output = f"{topic}.out-raw-{uuid.uuid4().hex[:4]}"
    _create(bootstrap, [output], partitions)
    group = f"{topic}-raw-{uuid.uuid4().hex[:4]}"
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": not transactional,
        "isolation.level": "read_committed" if transactional else "read_uncommitted",
    })  # fmt: skip
    config = {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True,
              "compression.type": "lz4"}  # fmt: skip
    if transactional:
        config["transactional.id"] = f"{group}-txn"
    producer = Producer(config)
    if transactional:
        producer.init_transactions(30)
    consumer.subscribe([topic])
    seen = 0
    first: float | None = None
    try:
        while seen < n_records:
            batch = [m for m in consumer.consume(BATCH, timeout=0.1) if m.error() is None]
            if not batch:
                continue
            if first is None:
                first = time.perf_counter()
            if transactional:
                producer.begin_transaction()
            for msg in batch:
                while True:
                    try:
                        producer.produce(output, msg.value(), msg.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
            seen += len(batch)
            if transactional:
                positions = {}
                for msg in batch:
                    positions[(msg.topic(), msg.partition())] = msg.offset() + 1
                offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
                producer.send_offsets_to_transaction(
                    offsets, consumer.consumer_group_metadata(), 30
                )
                producer.commit_transaction(30)
            else:
                producer.poll(0)
        if not transactional:
            producer.flush(60)
            consumer.commit(asynchronous=False)
        done = time.perf_counter()
    finally:
        consumer.close()
    assert first is not None
    return n_records / (done - first)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="best of N rounds per contender")
    args = parser.parse_args(argv)
    bootstrap = _bootstrap()
    topic = prepare_input(bootstrap, args.records, args.partitions)
    figures: dict[str, list[float]] = {"runtime": [], "runtime_reencode": [], "raw_txn": [],
                                       "raw_alo": []}  # fmt: skip
    for _ in range(args.rounds):
        # Interleaved rounds so that machine noise hits every contender alike.
        figures["raw_alo"].append(
            _raw_loop(bootstrap, topic, args.records, args.partitions, transactional=False)
        )
        figures["raw_txn"].append(
            _raw_loop(bootstrap, topic, args.records, args.partitions, transactional=True)
        )
        figures["runtime"].append(
            measure_noop_runtime(bootstrap, args.records, args.partitions, topic)
        )
        figures["runtime_reencode"].append(
            measure_noop_runtime(bootstrap, args.records, args.partitions, topic, reencode=True)
        )
        print({k: [round(x) for x in v] for k, v in figures.items()}, file=sys.stderr)
    best = {k: max(v) for k, v in figures.items()}
    result = {
        "records": args.records,
        "partitions": args.partitions,
        "batch_max_records": BATCH,
        "runtime_eos_events_per_s": round(best["runtime"]),
        "runtime_eos_reencode_events_per_s": round(best["runtime_reencode"]),
        "raw_transactional_events_per_s": round(best["raw_txn"]),
        "raw_at_least_once_events_per_s": round(best["raw_alo"]),
        "ratio_runtime_vs_raw_transactional": round(best["runtime"] / best["raw_txn"], 3),
        "ratio_runtime_vs_raw_at_least_once": round(best["runtime"] / best["raw_alo"], 3),
        "target_ratio_vs_raw_transactional": 0.7,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
