"""Training sets from the same code that serves: the online processor, driven in memory.

:func:`build_matrix` feeds events through :class:`FeaturesProcessor` with an in-memory
:class:`~streamml.state.State` (one partition, committed after each batch), exactly as the
runtime does online, and collects the FeatureVectors into a :class:`FeatureMatrix`. So
dedup, validation, late events and every window aggregate are the very same code paths;
the parity test checks the values bit for bit against the service on Kafka.

>>> from streamml.synthetic import generate_events
>>> m = build_matrix(e for e, _ in generate_events(50, seed=1))
>>> m.values.shape == (50, len(m.names))
True
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import numpy.typing as npt

from services.features.feature_set import FeatureSet, demo_feature_set
from services.features.processor import FeaturesProcessor
from streamml.errors import ConfigError
from streamml.processor import Record
from streamml.state import State

OFFLINE_TOPIC = "offline"
_BATCH = 500


@dataclass
class FeatureMatrix:
    """Feature vectors as a float64 matrix, one row per accepted distinct event."""

    feature_set: str
    feature_set_version: str
    feature_set_hash: str
    names: list[str]
    values: npt.NDArray[np.float64]
    event_ids: list[str]
    entity_ids: list[str]
    event_times: npt.NDArray[np.int64]
    categories: dict[str, list[str]]
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    """(event_id, reason, message) of each event that went to the dead letters."""
    duplicates: int = 0
    labels: npt.NDArray[np.int64] | None = None
    """Ground truth per row when the input carried labels (see :func:`read_events`)."""

    def __len__(self) -> int:
        return len(self.event_ids)

    def save(self, path: str | Path) -> None:
        """Write a compressed ``.npz`` (no pickled objects: strings are unicode arrays)."""
        arrays: dict[str, Any] = {
            "values": self.values,
            "names": np.array(self.names, dtype=str),
            "event_ids": np.array(self.event_ids, dtype=str),
            "entity_ids": np.array(self.entity_ids, dtype=str),
            "event_times": self.event_times,
            "feature_set": np.array(
                [self.feature_set, self.feature_set_version, self.feature_set_hash], dtype=str
            ),
        }
        for name, column in self.categories.items():
            arrays[f"category.{name}"] = np.array(column, dtype=str)
        if self.labels is not None:
            arrays["labels"] = self.labels
        np.savez_compressed(Path(path), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> FeatureMatrix:
        with np.load(Path(path), allow_pickle=False) as data:
            name, version, content_hash = (str(x) for x in data["feature_set"])
            categories = {
                key.removeprefix("category."): [str(x) for x in data[key]]
                for key in data.files
                if key.startswith("category.")
            }
            return cls(
                feature_set=name,
                feature_set_version=version,
                feature_set_hash=content_hash,
                names=[str(x) for x in data["names"]],
                values=np.asarray(data["values"], dtype=np.float64),
                event_ids=[str(x) for x in data["event_ids"]],
                entity_ids=[str(x) for x in data["entity_ids"]],
                event_times=np.asarray(data["event_times"], dtype=np.int64),
                categories=categories,
                labels=np.asarray(data["labels"], dtype=np.int64) if "labels" in data else None,
            )

    def attach_labels(self, labels: Mapping[str, int]) -> None:
        """Set :attr:`labels` from ``event_id -> label`` (every row must have one)."""
        missing = [eid for eid in self.event_ids if eid not in labels]
        if missing:
            raise ConfigError(f"{len(missing)} rows have no label (first: {missing[0]})")
        self.labels = np.array([labels[eid] for eid in self.event_ids], dtype=np.int64)


def build_matrix(
    events: Iterable[Mapping[str, Any]],
    *,
    feature_set: FeatureSet | None = None,
    processor: FeaturesProcessor | None = None,
) -> FeatureMatrix:
    """Features of ``events`` (in the given order, as one partition) via the online code.

    ``processor`` defaults to a :class:`FeaturesProcessor` for ``feature_set`` (default:
    the demo set) without a fail-stop circuit, with a fixed ``computed_at`` clock.
    """
    fs = feature_set or (processor.feature_set if processor else demo_feature_set())
    proc = processor or FeaturesProcessor(
        feature_set=fs, output_topic="features", circuit=None, clock=lambda: 0.0
    )
    if proc.circuit is not None:
        raise ConfigError("build_matrix needs a processor without a fail-stop circuit")
    state = State(proc.stores)
    for store in state.stores:
        store.assign(0)
    proc.on_assigned([(OFFLINE_TOPIC, 0)], state)

    rows: list[list[float]] = []
    event_ids: list[str] = []
    entity_ids: list[str] = []
    times: list[int] = []
    categories: dict[str, list[str]] = {name: [] for name, _ in fs.categories}
    rejected: list[tuple[str, str, str]] = []
    seen = 0

    def run(batch: list[Record]) -> None:
        result = proc.process(batch, state)
        state.commit()
        for out in result.outputs:
            value = out.value
            rows.append(value["values"])
            event_ids.append(value["event_id"])
            entity_ids.append(value["entity_id"])
            times.append(value["event_time"])
            for name, column in categories.items():
                column.append(value["categories"].get(name, ""))
        for rejection in result.rejections:
            rejected.append(
                (str(rejection.record.value.get("event_id")), rejection.reason, rejection.message)
            )

    batch: list[Record] = []
    for offset, event in enumerate(events):
        seen += 1
        batch.append(_record(offset, event))
        if len(batch) >= _BATCH:
            run(batch)
            batch = []
    if batch:
        run(batch)

    width = len(fs.names)
    matrix = np.array(rows, dtype=np.float64) if rows else np.empty((0, width), np.float64)
    return FeatureMatrix(
        feature_set=fs.name,
        feature_set_version=fs.version,
        feature_set_hash=fs.content_hash,
        names=list(fs.names),
        values=matrix.reshape(len(rows), width),
        event_ids=event_ids,
        entity_ids=entity_ids,
        event_times=np.array(times, dtype=np.int64),
        categories=categories,
        rejected=rejected,
        duplicates=seen - len(rows) - len(rejected),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_millis(event: dict[str, Any]) -> dict[str, Any]:
    """Top-level timestamps back to epoch milliseconds (fastavro's reader returns datetimes
    for ``timestamp-millis`` fields; the service sees ints)."""
    for key, value in event.items():
        if isinstance(value, datetime):
            aware = value if value.tzinfo else value.replace(tzinfo=UTC)
            event[key] = (aware - _EPOCH) // timedelta(milliseconds=1)
    return event


def _record(offset: int, event: Mapping[str, Any]) -> Record:
    event_time = event.get("event_time")
    return Record(
        topic=OFFLINE_TOPIC,
        partition=0,
        offset=offset,
        timestamp_ms=event_time if isinstance(event_time, int) else 0,
        key=str(event.get("entity_id", "")).encode("utf-8"),
        value=event,
        headers=(),
        schema="Event",
    )


def read_events(path: str | Path) -> Iterator[tuple[dict[str, Any], int | None]]:
    """``(event, label or None)`` from an Avro container file or a JSON-lines file.

    A JSON line is either an event, or ``{"event": {...}, "label": 0|1}`` (what the demo
    producer writes). Raises :class:`ConfigError` with the line number on bad input.
    """
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"input file {source} does not exist")
    if source.suffix == ".avro":
        with source.open("rb") as handle:
            try:
                for row in fastavro.reader(handle):
                    if not isinstance(row, dict):
                        raise ConfigError(f"{source}: records must be Avro records")
                    if isinstance(row.get("event"), dict):
                        yield _epoch_millis(row["event"]), row.get("label")
                    else:
                        yield _epoch_millis(row), None
            except (ValueError, EOFError) as exc:
                raise ConfigError(f"{source}: not a readable Avro container file: {exc}") from exc
        return
    if source.suffix not in (".jsonl", ".json", ".ndjson"):
        raise ConfigError(f"{source}: unknown input format (use .avro or .jsonl)")
    with source.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{source}:{number}: not JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise ConfigError(f"{source}:{number}: expected a JSON object")
            if "event" in row and isinstance(row["event"], dict):
                label = row.get("label")
                yield row["event"], None if label is None else int(label)
            else:
                yield row, None
