"""Following ``model.control``: every instance reads all of it, from the beginning.

Not group-consumed: each scorer instance assigns itself every partition of the control
topic at the earliest offset, so all instances see every instruction and converge on the
same route table. Nothing is committed; a restart reads the (compacted) topic again.
Reads are ``read_committed``: an auto-rollback a scorer writes inside its transaction is
seen only once that transaction commits.

The topic is read on one path and written on two, each for a reason the others cannot
serve:

- **read: the side-thread follower** (:class:`ControlReader`, :class:`ControlFollower`).
  An instruction must reach every instance, so the topic is read by assignment, not by
  the loop's consumer group (which would hand each record to one instance only, and
  would commit offsets the restart must not skip). The first read, to the end, happens
  at start-up before any record is scored (:func:`services.scorer.service.build`).
- **write inside the transaction: the canary auto-rollback** (an ``Output`` of
  :class:`~services.scorer.processor.ScorerProcessor`). The rollback is decided by the
  batch that saw the canary fail; written in that batch's transaction, it is on the
  topic exactly when the predictions that led to it are, and never after an aborted
  batch (a retried batch would otherwise write a second rollback).
- **write outside any transaction: :func:`publish_instruction`**, for the operator's
  ``streamml scorer promote|rollback|clear`` and for the roles a scorer filled from its
  settings at start-up. No loop runs there (the CLI), or none has started yet (the
  scorer records its settings before its first transaction), so there is no batch to be
  atomic with: a transaction would add a transactional id and buy nothing. The write is
  idempotent and acknowledged by all replicas.

Bringing the two writes onto one path would change what lands on the topic and when
(the start-up record would wait for the first batch; an operator command would need a
running scorer), so each stays, in the one place named above.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from services.scorer import metrics
from services.scorer.control import SCHEMA
from streamml.codec import AvroCodec
from streamml.errors import BrokerError, DecodeError
from streamml.runtime.clients import make_acked_producer, make_reader
from streamml.settings import KafkaSettings

log = logging.getLogger(__name__)

Instruction = tuple[int, dict[str, Any]]
"""(offset, decoded ModelControl value)."""


class ControlReader:
    """Reads a control topic from the beginning; knows when it has caught up."""

    def __init__(self, kafka: KafkaSettings, topic: str, codec: AvroCodec) -> None:
        self.topic = topic
        self._codec = codec
        self._consumer = make_reader(kafka, group_id=f"{topic}.reader.{uuid.uuid4().hex[:12]}")
        self._partitions: list[int] = []
        self._at_end: set[int] = set()

    def assign(self, timeout_s: float = 10.0) -> bool:
        """Assign every partition from the beginning; False if the topic does not exist."""
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as exc:
            raise BrokerError(f"cannot read metadata of {self.topic}: {exc}") from exc
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            return False
        self._partitions = sorted(found.partitions)
        self._consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._partitions]
        )
        return True

    @property
    def assigned(self) -> bool:
        return bool(self._partitions)

    @property
    def caught_up(self) -> bool:
        return bool(self._partitions) and self._at_end >= set(self._partitions)

    def poll(self, timeout_s: float) -> tuple[Instruction | None, str | None]:
        """One instruction (or None) and the role of a tombstone (or None)."""
        message = self._consumer.poll(timeout_s)
        if message is None:
            return None, None
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._at_end.add(int(message.partition() or 0))
            else:
                log.warning("model.control read error: %s", error)
            return None, None
        offset = int(message.offset() or 0)
        raw = message.value()
        if raw is None:
            key = message.key()
            role = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            return None, role
        try:
            value = self._codec.decode(raw, SCHEMA, topic=self.topic)
        except DecodeError as exc:
            log.error("undecodable model.control record at offset %d: %s", offset, exc)
            metrics.CONTROL_RECORDS.labels("invalid").inc()
            return None, None
        return (offset, value), None

    def latest_by_role(self, timeout_s: float) -> dict[str, Instruction]:
        """Read to the end: the last instruction per role (what compaction will keep)."""
        latest: dict[str, Instruction] = {}
        deadline = time.monotonic() + timeout_s
        while not self.caught_up:
            if time.monotonic() > deadline:
                raise BrokerError(f"could not read {self.topic} to its end within {timeout_s:g}s")
            instruction, tombstone = self.poll(0.5)
            if instruction is not None:
                latest[str(instruction[1].get("role"))] = instruction
            elif tombstone is not None:
                latest.pop(tombstone, None)
        return latest

    def close(self) -> None:
        self._consumer.close()


class ControlFollower:
    """A daemon thread applying every new instruction as it arrives."""

    def __init__(
        self,
        reader: ControlReader,
        apply: Callable[[Mapping[str, Any], int], str],
        *,
        clear_role: Callable[[str], object],
        poll_timeout_s: float = 0.5,
        retry_assign_s: float = 5.0,
    ) -> None:
        self._reader = reader
        self._apply = apply
        self._clear_role = clear_role
        self._poll_timeout_s = poll_timeout_s
        self._retry_assign_s = retry_assign_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._reader.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._reader.assigned:
                    if not self._reader.assign():
                        log.warning(
                            "control topic %s does not exist yet; retrying in %gs",
                            self._reader.topic,
                            self._retry_assign_s,
                        )
                        self._stop.wait(self._retry_assign_s)
                    continue
                instruction, tombstone = self._reader.poll(self._poll_timeout_s)
                if instruction is not None:
                    self._apply(instruction[1], instruction[0])
                elif tombstone is not None:
                    self._clear_role(tombstone)
            except Exception:  # the follower must outlive any single bad instruction
                log.exception("model.control follower error; continuing")
                self._stop.wait(1.0)


def publish_instruction(
    kafka: KafkaSettings, topic: str, codec: AvroCodec, value: Mapping[str, Any]
) -> None:
    """Write one ModelControl record (key = role), acknowledged by all replicas."""
    producer = make_acked_producer(kafka)
    errors: list[str] = []

    def report(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer.produce(
        topic,
        key=str(value["role"]).encode(),
        value=codec.encode(SCHEMA, value, topic=topic),
        on_delivery=report,
    )
    if producer.flush(30) or errors:
        raise BrokerError(f"could not write to {topic}: {'; '.join(errors) or 'timeout'}")
