"""Operator commands of the performance service (``streamml performance ...``).

* ``describe`` - the effective join and report settings, and which input streams make the
  watermark;
* ``recompute`` - read the input topics from the beginning (``read_committed``, up to their
  current end) and run the service's own pure core over them: the reports and alerts the
  service emits for that data, as JSON lines, without touching its consumer group. Use it to
  check a running service, or to see what a changed setting would have reported.

A bad argument or setting prints one line ``error: ...`` and exits 2; an unreachable broker
exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from services.performance.settings import PerformanceSettings
from streamml.commandline import command_group, fail, settings_or_fail
from streamml.errors import StreamMLError

app = command_group(
    "performance",
    "Performance service: settings, offline recomputation of reports.",
)


def _settings() -> PerformanceSettings:
    return settings_or_fail(PerformanceSettings)


@app.command()
def describe() -> None:
    """Print the effective settings and the watermark's input streams (JSON)."""
    from services.performance.processor import PerformanceProcessor

    settings = _settings()
    processor = PerformanceProcessor.from_settings(settings)
    shadow = settings.kafka.topic(settings.shadow_topic) if settings.shadow_topic else None
    streams = {
        topic: ("optional" if topic == shadow and not settings.shadow_required else "required")
        for topic in processor.input_schemas()
    }
    shown = settings.model_dump(mode="json", exclude={"kafka", "runtime", "http"})
    typer.echo(json.dumps({"settings": shown, "watermark_streams": streams}, indent=2))


@app.command()
def recompute(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="JSON lines file; '-' for stdout.")
    ] = Path("-"),
    timeout_s: Annotated[
        float, typer.Option(help="Give up reading after this many seconds.", min=1)
    ] = 300.0,
) -> None:
    """Run the pure core over the input topics as they are now; print reports and alerts."""
    settings = _settings()
    if str(output) != "-" and not output.parent.is_dir():
        fail(f"--output {output}: directory {output.parent} does not exist")
    try:
        records = _read_inputs(settings, timeout_s)
    except StreamMLError as exc:
        fail(str(exc), 1)
    with _Sink(output) as sink:
        counts = _replay(settings, records, sink)
    typer.echo(json.dumps(counts), err=True)


class _Sink:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: TextIO | None = None

    def __enter__(self) -> TextIO:
        if str(self._path) == "-":
            return sys.stdout
        self._file = self._path.open("w", encoding="utf-8")
        return self._file

    def __exit__(self, *_: object) -> None:
        if self._file is not None:
            self._file.close()


def _read_inputs(settings: PerformanceSettings, timeout_s: float) -> list[Any]:
    """Every committed input record up to each partition's end, decoded, in stream order."""
    import time
    import uuid

    from confluent_kafka import KafkaException, TopicPartition

    from services.performance.processor import PerformanceProcessor
    from streamml.codec import AvroCodec
    from streamml.errors import DecodeError
    from streamml.processor import Record
    from streamml.runtime.clients import make_reader

    codec = AvroCodec.from_settings(settings.kafka)
    inputs = PerformanceProcessor.from_settings(settings).input_schemas()
    consumer = make_reader(settings.kafka, group_id=f"performance-recompute-{uuid.uuid4().hex[:8]}")
    records: list[Record] = []
    try:
        ends: dict[tuple[str, int], int] = {}
        for name in inputs:
            metadata = consumer.list_topics(name, timeout=10)
            if metadata.topics[name].error is not None:
                raise StreamMLError(f"topic {name}: {metadata.topics[name].error}")
            for p in metadata.topics[name].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                if high > low:
                    ends[(name, p)] = high
        consumer.assign([TopicPartition(t, p, 0) for t, p in ends])
        deadline = time.monotonic() + timeout_s
        done: set[tuple[str, int]] = set()
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise StreamMLError(f"read only {len(records)} records in {timeout_s:.0f}s")
            for msg in consumer.consume(1000, timeout=1.0):
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                raw = msg.value()
                if msg.error() is not None or topic is None or partition is None:
                    continue
                if offset is not None and offset >= ends[(topic, partition)] - 1:
                    done.add((topic, partition))
                if raw is None or offset is None:
                    continue
                try:
                    value = codec.decode(raw, inputs[topic], topic=topic)
                except DecodeError:
                    continue  # the service dead-letters it; it has no effect on reports
                records.append(Record(topic, partition, offset, msg.timestamp()[1], msg.key(),
                                      value, (), inputs[topic]))  # fmt: skip
            # Transaction markers take offsets too: a partition whose last offset is a
            # marker is done once its position reaches the end.
            for tp in consumer.position([TopicPartition(t, p) for t, p in ends]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    done.add((tp.topic, tp.partition))
    except KafkaException as exc:
        raise StreamMLError(f"cannot read the input topics: {exc}") from exc
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.topic, r.partition, r.offset))
    return records


def _replay(settings: PerformanceSettings, records: list[Any], sink: TextIO) -> dict[str, int]:
    from services.performance.processor import PerformanceProcessor
    from streamml.state import State

    processor = PerformanceProcessor.from_settings(settings, clock=lambda: 0.0)
    state = State(processor.stores)
    partitions = sorted({r.partition for r in records})
    for store in state.stores:
        for p in partitions:
            store.assign(p)
    processor.on_assigned([(r.topic, r.partition) for r in records[:1]], state)
    counts = {"records": len(records), "reports": 0, "alerts": 0, "dead_letters": 0}
    for start in range(0, len(records), 1000):
        result = processor.process(records[start : start + 1000], state)
        state.commit()
        counts["dead_letters"] += len(result.rejections)
        for out in result.outputs:
            if out.schema == "PerformanceReport":
                counts["reports"] += 1
            elif out.schema == "SloAlert":
                counts["alerts"] += 1
            else:
                counts["dead_letters"] += 1
                continue
            sink.write(json.dumps({"type": out.schema, **out.value}) + "\n")
    return counts
