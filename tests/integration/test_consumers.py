"""Downstream readers on what the real services wrote: streamml.client (sync, asyncio,
faust-streaming), the documented examples, and ``streamml tail`` on every output topic.

One module fixture runs the demo pipeline (the real features, scorer, drift and
performance services as processes) on the session broker under a fresh prefix; every test
reads its topics. The oracle for a value is fastavro reading the body with the schema file
(not the project's codec). The registry wire format is read from a real Apicurio registry
(the session's ``schema_registry``): the services' records are re-framed (their body bytes
unchanged) with the id that registry gave their schema, and the readers fetch the writer
schema by that id. Why re-framed rather than written by services run against the registry:
docs/consumers.md.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from streamml.client import AsyncReader, DriftAlert, Prediction, Reader
from streamml.codec import AvroCodec, default_schemas_dir
from streamml.settings import KafkaSettings
from tests.conftest import RegistryEndpoint
from tests.kafkatest import consume_all, create_topics

pytestmark = [pytest.mark.integration, pytest.mark.consumers, pytest.mark.serial]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "consumers"
READ_TOPICS = {"predictions": Prediction, "drift.alerts": DriftAlert}
SCHEMA_FILES = {"Prediction": "prediction.avsc", "DriftAlert": "drift_alert.avsc"}


@dataclass(frozen=True)
class Written:
    """One record as the services wrote it: position, key, raw value, oracle value."""

    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    value: dict[str, Any]


@dataclass(frozen=True)
class Pipeline:
    bootstrap: str
    prefix: str
    written: dict[str, list[Written]]

    def kafka(self, prefix: str | None = None) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=self.prefix if prefix is None else prefix,
        )


def _strip_logical(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical(v) for v in schema]
    return schema


def _oracle(schema_name: str) -> Callable[[bytes], dict[str, Any]]:
    """fastavro with the schema file: single-object header checked, body read."""
    text = (default_schemas_dir() / SCHEMA_FILES[schema_name]).read_text()
    parsed = fastavro.parse_schema(_strip_logical(json.loads(text)))
    fingerprint = bytes.fromhex(
        fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(parsed),
                                    "CRC-64-AVRO")
    )  # fmt: skip

    def read(raw: bytes) -> dict[str, Any]:
        assert raw[:2] == b"\xc3\x01" and raw[2:10] == fingerprint, raw[:10].hex()
        body = io.BytesIO(raw[10:])
        value = fastavro.schemaless_reader(body, parsed)
        assert body.tell() == len(raw) - 10
        return value  # type: ignore[return-value]

    return read


@pytest.fixture(scope="module")
def pipeline(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    prefix = f"c{uuid.uuid4().hex[:8]}."
    run_dir = tmp_path_factory.mktemp("consumers-demo")
    done = subprocess.run(
        [sys.executable, "-m", "streamml.cli", "demo", "run", "--headless",
         "--duration", "30", "--drift-at", "0.3", "--monitor-after", "0",
         "--bootstrap", kafka_bootstrap, "--prefix", prefix, "--dir", str(run_dir)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    output = (done.stdout + done.stderr)[-3000:]
    assert "demo services stopped" in output, output
    written: dict[str, list[Written]] = {}
    for topic, cls in READ_TOPICS.items():
        read = _oracle(cls.schema_name())
        messages = consume_all(kafka_bootstrap, prefix + topic, idle_s=3)
        written[topic] = sorted(
            (Written(m.partition(), m.offset(), m.key(), m.value(), read(m.value()))
             for m in messages),
            key=lambda w: (w.partition, w.offset),
        )  # fmt: skip
    assert len(written["predictions"]) >= 1000, output
    assert written["drift.alerts"], output
    return Pipeline(kafka_bootstrap, prefix, written)


def _group() -> str:
    return f"consumers-test-{uuid.uuid4().hex[:8]}"


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        got = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
    finally:
        consumer.close()


def _next_offsets(written: list[Written]) -> dict[int, int]:
    """Per partition of the written records: one past the last (what a commit stores)."""
    ends: dict[int, int] = {}
    for w in written:
        ends[w.partition] = max(ends.get(w.partition, 0), w.offset + 1)
    return ends


def _read_sync(reader: Reader[Any], count: int, timeout_s: float = 90.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        record = reader.poll(0.5)
        if record is not None:
            got.append(record)
    end = time.monotonic() + 2.0  # and a little longer: nothing more may come
    while time.monotonic() < end:
        record = reader.poll(0.2)
        if record is not None:
            got.append(record)
    return got


async def _read_async(reader: AsyncReader[Any], count: int, timeout_s: float = 90.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        record = await reader.getone(0.5)
        if record is not None:
            got.append(record)
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        record = await reader.getone(0.2)
        if record is not None:
            got.append(record)
    return got


def _as_written(records: list[Any]) -> list[tuple[int, int, bytes | None, dict[str, Any]]]:
    return sorted((r.partition, r.offset, r.key, r.value.to_avro()) for r in records)


def _expected(written: list[Written]) -> list[tuple[int, int, bytes | None, dict[str, Any]]]:
    return [(w.partition, w.offset, w.key, w.value) for w in written]


# -- the readers, default encoding ---------------------------------------------------------


@pytest.mark.parametrize("topic", sorted(READ_TOPICS))
def test_sync_reader_reads_what_the_services_wrote(pipeline: Pipeline, topic: str) -> None:
    cls = READ_TOPICS[topic]
    written = pipeline.written[topic]
    group = _group()
    with Reader(cls, topic, group_id=group, kafka=pipeline.kafka()) as reader:
        records = _read_sync(reader, len(written))
        assert all(isinstance(r.value, cls) for r in records)
        assert _as_written(records) == _expected(written)
        reader.commit()
    # Committed after handling: each partition's offset is one past its last record (the
    # commit markers of the services' transactions come after it).
    physical = pipeline.prefix + topic
    assert _committed(pipeline.bootstrap, group, physical) == _next_offsets(written)


@pytest.mark.parametrize("topic", sorted(READ_TOPICS))
def test_async_reader_reads_what_the_services_wrote(pipeline: Pipeline, topic: str) -> None:
    cls = READ_TOPICS[topic]
    written = pipeline.written[topic]
    group = _group()

    async def read() -> list[Any]:
        async with AsyncReader(cls, topic, group_id=group, kafka=pipeline.kafka()) as reader:
            records = await _read_async(reader, len(written))
            await reader.commit()
            return records

    records = asyncio.run(read())
    assert all(isinstance(r.value, cls) for r in records)
    assert _as_written(records) == _expected(written)
    physical = pipeline.prefix + topic
    assert _committed(pipeline.bootstrap, group, physical) == _next_offsets(written)


def test_a_record_not_handled_is_not_committed(pipeline: Pipeline) -> None:
    written = pipeline.written["drift.alerts"]
    group = _group()
    with Reader(DriftAlert, "drift.alerts", group_id=group, kafka=pipeline.kafka()) as reader:
        first = None
        deadline = time.monotonic() + 60
        while first is None and time.monotonic() < deadline:
            first = reader.poll(0.5)
        assert first is not None and first.value.to_avro() in [w.value for w in written]
        reader.commit()  # the first one was handled
        second = reader.poll(5.0)  # handed out, never handled: its offset is not committed
    assert second is not None and second.partition == first.partition  # one partition
    committed = _committed(pipeline.bootstrap, group, pipeline.prefix + "drift.alerts")
    assert committed[first.partition] == first.offset + 1


def test_pause_stops_delivery_until_resume(pipeline: Pipeline) -> None:
    written = pipeline.written["predictions"]
    with Reader(Prediction, "predictions", group_id=_group(), kafka=pipeline.kafka()) as reader:
        first = None
        deadline = time.monotonic() + 60
        while first is None and time.monotonic() < deadline:
            first = reader.poll(0.5)
        assert first is not None
        reader.pause()
        assert [reader.poll(0.5) for _ in range(6)] == [None] * 6
        reader.resume()
        rest = _read_sync(reader, len(written) - 1)
    # Nothing lost or repeated across the pause (librdkafka refetches from the position).
    assert _as_written([first, *rest]) == _expected(written)


# -- the registry wire format (the real Apicurio registry) --------------------------------


@dataclass(frozen=True)
class RegistryCopies:
    """The services' records re-framed as ``00`` + the real registry's id: one topic each."""

    settings: KafkaSettings  # broker, prefix and the registry (URL and its CA)
    codec: AvroCodec
    targets: dict[str, str]  # logical topic -> its registry-framed copy
    ids: dict[str, int]  # logical topic -> the schema id in the copy's headers


@pytest.fixture(scope="module")
def registry_copies(pipeline: Pipeline, schema_registry: RegistryEndpoint) -> RegistryCopies:
    """Each read topic copied onto ``registry.<topic>``: the body bytes the services wrote,
    behind the id the real registry gave the schema under ``<copy>-value``."""
    settings = KafkaSettings(
        bootstrap_servers=pipeline.bootstrap,
        topic_prefix=pipeline.prefix,
        schema_registry_url=schema_registry.url,
        schema_registry_ssl_ca_location=str(schema_registry.ca_path),
    )
    codec = AvroCodec.from_settings(settings)
    client = SchemaRegistryClient(
        {"url": schema_registry.url, "ssl.ca.location": str(schema_registry.ca_path)}
    )
    targets: dict[str, str] = {}
    ids: dict[str, int] = {}
    producer = Producer({"bootstrap.servers": pipeline.bootstrap})
    for topic, cls in READ_TOPICS.items():
        target = f"registry.{topic}"
        physical = pipeline.prefix + target
        create_topics(pipeline.bootstrap, "", partitions=4, names=[physical])
        for w in pipeline.written[topic]:
            framed = codec.encode(cls.schema_name(), w.value, topic=physical)  # registers
            assert framed[:1] == b"\x00" and framed[5:] == w.raw[10:]  # same body bytes
            producer.produce(physical, key=w.key, value=framed[:5] + w.raw[10:],
                             partition=w.partition)  # fmt: skip
            producer.poll(0)
        # The id in the header is the one the registry itself lists for the subject.
        registered = client.get_latest_version(f"{physical}-value")
        assert f'"{cls.schema_name()}"' in registered.schema.schema_str
        assert int.from_bytes(framed[1:5], "big") == registered.schema_id
        targets[topic], ids[topic] = target, registered.schema_id
    assert producer.flush(30) == 0
    return RegistryCopies(settings, codec, targets, ids)


def _avro_json(values: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(v, sort_keys=True) for v in values)


@pytest.mark.registry
@pytest.mark.parametrize("topic", sorted(READ_TOPICS))
def test_readers_read_the_registry_wire_format(
    pipeline: Pipeline, registry_copies: RegistryCopies, topic: str
) -> None:
    cls = READ_TOPICS[topic]
    written = pipeline.written[topic]
    target = registry_copies.targets[topic]
    expected = _avro_json([w.value for w in written])
    # A reader of its own, as a downstream process builds it: from the settings (the
    # registry's URL and CA), so every writer schema is fetched from the registry by id.
    settings = registry_copies.settings
    with Reader(cls, target, group_id=_group(), kafka=settings) as reader:
        records = _read_sync(reader, len(written))
    assert all(isinstance(r.value, cls) for r in records)
    assert _avro_json([r.value.to_avro() for r in records]) == expected

    async def read() -> list[Any]:
        async with AsyncReader(cls, target, group_id=_group(), kafka=settings) as reader:
            return await _read_async(reader, len(written))

    records = asyncio.run(read())
    assert all(isinstance(r.value, cls) for r in records)
    assert _avro_json([r.value.to_avro() for r in records]) == expected


# -- transactions: a reader started mid-stream never sees an aborted one -------------------


def _transactional_producer(bootstrap: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap,
                         "transactional.id": f"consumers-test-{uuid.uuid4().hex[:8]}"})  # fmt: skip
    producer.init_transactions(30)
    return producer


def _in_transaction(producer: Producer, topic: str, batch: list[Written]) -> None:
    producer.begin_transaction()
    for w in batch:
        producer.produce(topic, key=w.key, value=w.raw, partition=0)
    producer.flush(30)


@pytest.mark.parametrize("reader_kind", ["sync", "async"])
def test_reader_started_mid_stream_never_sees_an_aborted_transaction(
    pipeline: Pipeline, reader_kind: str
) -> None:
    predictions = pipeline.written["predictions"]
    committed_first, aborted, committed_last = (
        predictions[0:100],
        predictions[100:200],
        predictions[200:300],
    )
    target = f"txn.{reader_kind}.predictions"
    physical = pipeline.prefix + target
    create_topics(pipeline.bootstrap, "", partitions=1, names=[physical])
    producer = _transactional_producer(pipeline.bootstrap)
    _in_transaction(producer, physical, committed_first)
    producer.commit_transaction(30)
    # The fault: a transaction that is open when the reader starts, then aborted.
    _in_transaction(producer, physical, aborted)
    event_ids: list[str] = []

    def after_start() -> None:
        producer.abort_transaction(30)
        _in_transaction(producer, physical, committed_last)
        producer.commit_transaction(30)

    kafka = pipeline.kafka()
    if reader_kind == "sync":
        with Reader(Prediction, target, group_id=_group(), kafka=kafka) as reader:
            event_ids += [r.value.event_id for r in _read_sync(reader, 1, timeout_s=60)]
            after_start()
            more = 200 - len(event_ids)
            event_ids += [r.value.event_id for r in _read_sync(reader, more, timeout_s=60)]
    else:

        async def read() -> None:
            async with AsyncReader(Prediction, target, group_id=_group(), kafka=kafka) as reader:
                event_ids.extend(r.value.event_id for r in await _read_async(reader, 1, 60))
                after_start()
                more = 200 - len(event_ids)
                event_ids.extend(r.value.event_id for r in await _read_async(reader, more, 60))

        asyncio.run(read())
    assert event_ids == [w.value["event_id"] for w in committed_first + committed_last]
    # The aborted records are in the log: a read_uncommitted consumer sees them.
    everything = consume_all(pipeline.bootstrap, physical, read_committed=False, idle_s=2)
    assert len(everything) >= 300


# -- the documented examples, run as a user runs them ---------------------------------------

_LINE = re.compile(r"([0-9a-f-]{36}) (\S+) (\S+)\s*$")


def _run_example(
    pipeline: Pipeline,
    command: list[str],
    expect: int,
    timeout_s: float,
    line: re.Pattern[str] = _LINE,
) -> set[tuple[str, str, float]]:
    env = {**os.environ, "STREAMML_KAFKA_BOOTSTRAP_SERVERS": pipeline.bootstrap,
           "STREAMML_KAFKA_TOPIC_PREFIX": pipeline.prefix, "PYTHONUNBUFFERED": "1"}  # fmt: skip
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"consumers-example-{uuid.uuid4().hex}.log"
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=log.parent, env=env,
                                   stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    lines: set[str] = set()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            lines = {m.group(0).strip() for m in map(line.search, log.read_text().splitlines())
                     if m}  # fmt: skip
            if len(lines) >= expect:
                break
            time.sleep(1.0)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    output = log.read_text()
    log.unlink()
    assert len(lines) >= expect, output[-3000:]
    return {(m[1], m[2], float(m[3])) for m in map(line.search, lines) if m}


def _printed(written: list[Written]) -> set[tuple[str, str, float]]:
    return {(w.value["event_id"], w.value["model_version"], w.value["score"]) for w in written}


@pytest.mark.parametrize("example", ["sync_reader.py", "async_reader.py"])
def test_documented_python_example_prints_every_prediction(
    pipeline: Pipeline, example: str
) -> None:
    expected = _printed(pipeline.written["predictions"])
    command = [sys.executable, str(EXAMPLES / example)]
    got = _run_example(pipeline, command, len(expected), timeout_s=180)
    assert got == expected


def test_documented_faust_agent_prints_every_prediction(pipeline: Pipeline) -> None:
    expected = _printed(pipeline.written["predictions"])
    got = _run_example(
        pipeline,
        [sys.executable, str(EXAMPLES / "faust_agent.py"), "worker", "-l", "warn"],
        len(expected),
        timeout_s=300,
    )
    assert got == expected


FAUST_APP = Path(__file__).with_name("faust_reader_app.py")


_FAUST_LINE = re.compile(r"(?:^|\] )(\S+) (\{.*\})\s*$")  # faust logs what agents print


def _faust_lines(output: str, topics: dict[str, str]) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {name: [] for name in topics}
    for match in map(_FAUST_LINE.search, output.splitlines()):
        if match and match[1] in got:
            got[match[1]].append(match[2])
    return got


def _faust_reads(
    env: dict[str, str], topics: dict[str, str], expect: dict[str, int], timeout_s: float
) -> dict[str, list[str]]:
    """Run the test faust worker on ``topics`` (logical name -> value type) until it has
    printed ``expect`` records of each; its values per topic, as sorted JSON lines."""
    app_id = f"consumers-faust-{uuid.uuid4().hex[:8]}"
    specs = [f"{name}={type_name}" for name, type_name in topics.items()]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"{app_id}.log"
    env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, str(FAUST_APP), app_id, *specs],
                                   cwd=log.parent, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT)  # fmt: skip

    def complete() -> bool:
        got = _faust_lines(log.read_text(), topics)
        return all(len(got[name]) >= count for name, count in expect.items())

    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None and not complete():
            time.sleep(1.0)
        time.sleep(2.0)  # and a little longer: nothing more may come
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    output = log.read_text()
    log.unlink()
    got = _faust_lines(output, topics)
    assert all(len(got[name]) >= count for name, count in expect.items()), output[-3000:]
    return {name: sorted(values) for name, values in got.items()}


@pytest.mark.registry
def test_faust_codec_reads_both_encodings_of_drift_alerts_and_predictions(
    pipeline: Pipeline, registry_copies: RegistryCopies
) -> None:
    """One faust worker on four topics: ``drift.alerts`` and ``predictions`` as the services
    wrote them (single-object), and their copies in the registry wire format, its codec
    fetching each writer schema by id."""
    settings = registry_copies.settings
    env = {"STREAMML_KAFKA_BOOTSTRAP_SERVERS": pipeline.bootstrap,
           "STREAMML_KAFKA_TOPIC_PREFIX": pipeline.prefix,
           "STREAMML_KAFKA_SCHEMA_REGISTRY_URL": str(settings.schema_registry_url),
           "STREAMML_KAFKA_SCHEMA_REGISTRY_SSL_CA_LOCATION":
               str(settings.schema_registry_ssl_ca_location)}  # fmt: skip
    topics: dict[str, str] = {}
    expected: dict[str, list[str]] = {}
    for name, cls in READ_TOPICS.items():
        written = pipeline.written[name]
        for topic in (name, registry_copies.targets[name]):
            topics[topic] = cls.schema_name()
            expected[topic] = _avro_json([w.value for w in written])
    got = _faust_reads(env, topics, {t: len(v) for t, v in expected.items()}, timeout_s=300)
    for topic, values in expected.items():
        assert got[topic] == values, topic


JAVA_PROJECT = EXAMPLES / "java"
JAVA_SOURCE = JAVA_PROJECT / "src" / "main" / "java" / "streamml" / "example" / "ReadTopic.java"


JAVA_REGISTRY_SOURCE = JAVA_SOURCE.with_name("ReadRegistryTopic.java")


def _java_classpath(tmp_path: Path) -> str:
    """The example's classpath from Maven: offline when ~/.m2 has it, else fetched once."""
    mvn = shutil.which("mvn")
    assert mvn, "Maven is needed for the Java consumer test"
    out = tmp_path / "classpath.txt"
    command = [mvn, "-q", "-B", "dependency:build-classpath", f"-Dmdep.outputFile={out}"]
    done = subprocess.run([*command[:2], "-o", *command[2:]], cwd=JAVA_PROJECT,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    if done.returncode != 0:  # first run on this machine: fetch from Maven Central
        done = subprocess.run(command, cwd=JAVA_PROJECT, capture_output=True, text=True,
                              timeout=900, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out.read_text().strip()


# What the Java examples print per topic (the fields named after their fixed arguments) and
# the lines they print, parsed back into (field, field, number) triples.
JAVA_FIELDS = {
    "predictions": ("event_id", "model_version", "score"),
    "drift.alerts": ("alert_id", "state", "records_seen"),
}
_JAVA_LINE = re.compile(r"^((?:features|predictions)\.\S+|[0-9a-f-]{36}) (\S+) (\S+)\s*$")


def _java_printed(written: list[Written], topic: str) -> set[tuple[str, str, float]]:
    first, second, number = JAVA_FIELDS[topic]
    return {(w.value[first], w.value[second], w.value[number]) for w in written}


@pytest.mark.parametrize("topic", sorted(READ_TOPICS))
def test_java_consumer_with_apache_avro_reads_what_the_services_wrote(
    pipeline: Pipeline, tmp_path: Path, topic: str
) -> None:
    java = shutil.which("java")
    assert java, "Java 17 is needed for the Java consumer test"
    classpath = _java_classpath(tmp_path)
    schema = default_schemas_dir() / SCHEMA_FILES[READ_TOPICS[topic].schema_name()]
    command = [java, "-cp", classpath, str(JAVA_SOURCE), pipeline.bootstrap,
               pipeline.prefix + topic, str(schema), *JAVA_FIELDS[topic]]  # fmt: skip
    expected = _java_printed(pipeline.written[topic], topic)
    got = _run_example(pipeline, command, len(expected), timeout_s=300, line=_JAVA_LINE)
    assert got == expected


@pytest.mark.registry
@pytest.mark.parametrize("topic", sorted(READ_TOPICS))
def test_java_consumer_reads_the_registry_wire_format(
    pipeline: Pipeline, registry_copies: RegistryCopies, tmp_path: Path, topic: str
) -> None:
    """Apache Avro's GenericDatumReader on the body after the 5-byte header, with the
    writer schema fetched by id over the real registry's Confluent-compatible HTTPS API."""
    java = shutil.which("java")
    assert java, "Java 17 is needed for the Java consumer test"
    classpath = _java_classpath(tmp_path)
    settings = registry_copies.settings
    target = pipeline.prefix + registry_copies.targets[topic]
    command = [java, "-cp", classpath, str(JAVA_REGISTRY_SOURCE), pipeline.bootstrap, target,
               str(settings.schema_registry_url),
               str(settings.schema_registry_ssl_ca_location), *JAVA_FIELDS[topic]]  # fmt: skip
    expected = _java_printed(pipeline.written[topic], topic)
    got = _run_example(pipeline, command, len(expected), timeout_s=300, line=_JAVA_LINE)
    assert got == expected


def test_docs_show_the_examples_that_run() -> None:
    text = (ROOT / "docs" / "consumers.md").read_text()
    for example in sorted(EXAMPLES.glob("*.py")):
        code = example.read_text()
        body = code.split('"""', 2)[2].strip()  # without the module docstring
        assert body in text, f"docs/consumers.md does not show {example.name} as it is"
    for source in (JAVA_SOURCE, JAVA_REGISTRY_SOURCE):
        java = source.read_text()
        assert java[java.index("public final class") :].strip() in text, source.name


# -- tail, on every output topic as the services write it -----------------------------------

TAILED = {
    "features": "FeatureVector",
    "predictions": "Prediction",
    "drift.alerts": "DriftAlert",
    "drift.windows": "DriftWindowReport",
    "performance": "PerformanceReport",
    "model.control": "ModelControl",
    "events.dlq": None,  # dead letters: the bytes as they came, undecodable or not
}


@pytest.mark.parametrize("topic", sorted(TAILED))
def test_tail_prints_every_record_the_services_wrote(pipeline: Pipeline, topic: str) -> None:
    messages = consume_all(pipeline.bootstrap, pipeline.prefix + topic, idle_s=3)
    assert messages, f"the pipeline wrote nothing to {topic}"
    done = subprocess.run(
        [sys.executable, "-m", "streamml.cli", "tail", topic, "--from-beginning",
         "--idle-exit", "5", "--bootstrap", pipeline.bootstrap, "--prefix", pipeline.prefix],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted((line["partition"], line["offset"]) for line in lines) == sorted(
        (m.partition(), m.offset()) for m in messages
    )
    schema = TAILED[topic]
    if schema is not None:
        assert {line["schema"] for line in lines} == {schema}
        assert not [line for line in lines if "error" in line]
