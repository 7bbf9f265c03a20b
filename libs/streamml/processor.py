"""The processor interface: a service's logic as a pure function of records and state.

A service implements :class:`Processor`. The runtime (``streamml.runtime``) polls Kafka,
decodes values, calls :meth:`Processor.process` with a micro-batch and the state, then
writes the outputs, the dead letters, the state changes and the input offsets in one
Kafka transaction. Nothing here imports Kafka, so a processor is tested with plain lists.

>>> class Upper(Processor):
...     def process(self, records, state):
...         return Result(outputs=[
...             Output(topic="out", schema="Label", key=r.key, value=r.value) for r in records])
>>> rec = Record(topic="in", partition=0, offset=7, timestamp_ms=0, key=b"k",
...              value={"x": 1}, headers=(), schema="Label")
>>> Upper().process([rec], None).outputs[0].key
b'k'
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamml.codec import AvroCodec
    from streamml.state import State

Headers = tuple[tuple[str, bytes], ...]

REPLAY_HEADER_PREFIX = "replay."
REDRIVE_HEADER_PREFIX = "redrive."


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded input record and where it came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: Mapping[str, Any]
    headers: Headers
    schema: str
    """Name of the reader schema the value was decoded into (e.g. ``Event``)."""
    raw_value: bytes | None = None
    """The value's bytes as they were on the topic (for forwarding without re-encoding)."""

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    @property
    def is_replay(self) -> bool:
        """True when an operator replay or dead-letter redrive put this record here."""
        return any(
            key.startswith(REPLAY_HEADER_PREFIX) or key.startswith(REDRIVE_HEADER_PREFIX)
            for key, _ in self.headers
        )

    def replay_headers(self) -> Headers:
        """The ``replay.*``/``redrive.*`` headers, to carry over to derived records."""
        if not self.headers:  # almost every record: no generator, no tuple
            return ()
        return tuple(
            (key, value)
            for key, value in self.headers
            if key.startswith(REPLAY_HEADER_PREFIX) or key.startswith(REDRIVE_HEADER_PREFIX)
        )


@dataclass(frozen=True, slots=True)
class Output:
    """A record to produce: value is encoded with ``schema`` and written to ``topic``.

    ``topic`` is the physical topic name (prefix included). ``partition`` is normally
    left to the partitioner (by key); set it to pin a record to a partition.
    """

    topic: str
    schema: str
    value: Mapping[str, Any]
    key: bytes | str | None = None
    headers: Headers = ()
    partition: int | None = None
    raw_value: bytes | None = None
    """Already-encoded bytes to write as they are; ``value`` is then informational."""

    @classmethod
    def forward(cls, record: Record, topic: str, *, headers: Headers | None = None) -> Output:
        """The input record, byte-identical, to ``topic`` (no re-encoding)."""
        return cls(
            topic,
            record.schema,
            record.value,
            key=record.key,
            headers=record.headers if headers is None else headers,
            raw_value=record.raw_value,
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input record that goes to ``<topic>.dlq`` with the reason.

    ``reason`` is a short, low-cardinality class (``validation.range``, ``late``); it
    becomes the ``dlq.error.class`` header and a metric label. ``message`` is for humans.
    """

    record: Record
    reason: str
    message: str
    stage: str = "process"


@dataclass(frozen=True, slots=True)
class Halt:
    """Ask the runtime to stop consuming (fail-stop), e.g. because input looks corrupt.

    The runtime commits what was processed, rewinds every partition to its first record
    in ``unconsumed`` (those are processed again later), pauses all partitions and
    reports not-ready. It resumes on an operator command (``POST /resume`` on the
    service's HTTP port) or, when ``probe_after_s`` is set, by itself after that delay;
    either way it calls :meth:`Processor.on_resume` first.
    """

    reason: str
    unconsumed: Sequence[Record] = ()
    probe_after_s: float | None = None


@dataclass(slots=True)
class Result:
    """What a processor returns for one micro-batch."""

    outputs: list[Output] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    halt: Halt | None = None


class Processor(ABC):
    """A service's pure logic. Subclasses implement :meth:`process`.

    ``stores`` names the state stores the processor uses; the runtime backs each with a
    compacted changelog topic ``<group>-<store>-changelog`` co-partitioned with the
    input, restores them on partition assignment, and commits their changes with the
    offsets. A processor must raise on a record it cannot handle (or return a
    :class:`Rejection`); the runtime then isolates the bad record, sends it to the
    dead-letter topic and processes the others.
    """

    stores: tuple[str, ...] = ()

    @abstractmethod
    def process(self, records: Sequence[Record], state: State) -> Result:
        """Turn a micro-batch of records (ordered per partition) into outputs."""

    def on_assigned(self, partitions: Sequence[tuple[str, int]], state: State) -> None:  # noqa: B027
        """Partitions were assigned and their state restored (before any record)."""

    def on_revoked(self, partitions: Sequence[tuple[str, int]]) -> None:  # noqa: B027
        """Partitions were taken away; their state is gone from ``state`` after this."""

    def on_codec(self, codec: AvroCodec) -> None:  # noqa: B027
        """The codec the runtime encodes outputs with (called once, before any record).

        A processor that writes :attr:`Output.raw_value` itself must produce the bytes
        this codec would (framing included) and can check that here.
        """

    def on_resume(self, *, probe: bool) -> None:  # noqa: B027
        """Consumption resumes after a :class:`Halt` (``probe`` when by timer)."""

    def is_ready(self) -> bool:
        """Readiness of the processor itself (e.g. a model is loaded)."""
        return True
