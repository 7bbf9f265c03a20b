"""Drive the drift processor like the runtime would, without a broker.

Input records are fed in micro-batches; the window reports a batch produces become the
``drift.windows`` records of the next call (the Kafka hop), and state changes are
committed after each call, as the runtime does after a committed transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from services.drift.episodes import WindowTestParams
from services.drift.processor import DriftProcessor
from services.drift.reference import Reference, reference_from_mapping, synthetic_reference
from streamml.processor import Record
from streamml.state import State

FEATURES = "features"
PREDICTIONS = "predictions"
WINDOWS = "drift.windows"
ALERTS = "drift.alerts"
CHANNELS = {"pos": 0.5, "ecommerce": 0.35, "atm": 0.1, "moto": 0.05}


def make_reference(features: int = 4, *, seed: int = 7, rows: int = 20_000) -> Reference:
    """Standard-normal features f0..f{n-1}, a beta score, and the channel attribute."""
    rng = np.random.default_rng(seed)
    columns = {f"f{i}": rng.normal(size=rows) for i in range(features)}
    document = synthetic_reference(
        columns, score=rng.beta(1, 12, size=rows), categories={"channel": CHANNELS},
        threshold=0.3, seed=seed,
    )  # fmt: skip
    return reference_from_mapping(document)


def make_processor(
    reference: Reference, *, partitions: int = 1, window_ms: int = 5_000, **kwargs: Any
) -> DriftProcessor:
    return DriftProcessor(
        reference=reference,
        features_topic=FEATURES,
        predictions_topic=PREDICTIONS,
        windows_topic=WINDOWS,
        alerts_topic=ALERTS,
        state_key=b"test-key",
        source_partitions=partitions,
        window_ms=window_ms,
        tests=kwargs.pop("tests", WindowTestParams()),
        **kwargs,
    )


def feature_record(
    partition: int,
    offset: int,
    event_time: int,
    names: Sequence[str],
    values: Sequence[float],
    channel: str | None = "pos",
    headers: tuple[tuple[str, bytes], ...] = (),
) -> Record:
    return Record(
        topic=FEATURES, partition=partition, offset=offset, timestamp_ms=event_time, key=b"k",
        value={"event_time": event_time, "names": list(names), "values": list(values),
               "categories": {} if channel is None else {"channel": channel}},
        headers=headers, schema="FeatureVector",
    )  # fmt: skip


class Harness:
    """A processor, its state, and the internal topic between its two stages."""

    def __init__(self, processor: DriftProcessor, partitions: int = 1) -> None:
        self.processor = processor
        self.state = State(processor.stores)
        for store in self.state.stores:
            for p in range(partitions):
                store.assign(p)
        self.windows_offset = 0
        self.alerts: list[dict[str, Any]] = []
        self.alert_positions: list[int] = []
        self.reports: list[dict[str, Any]] = []
        self.fed = 0

    def feed(self, records: Sequence[Record]) -> list[dict[str, Any]]:
        """One micro-batch of input records, then one of the reports it produced."""
        result = self.processor.process(records, self.state)
        self.state.commit()
        self.fed += len(records)
        reports = [out.value for out in result.outputs if out.topic == WINDOWS]
        self.reports.extend(reports)
        new: list[dict[str, Any]] = []
        if reports:
            batch = []
            for report in reports:
                batch.append(Record(topic=WINDOWS, partition=0, offset=self.windows_offset,
                                    timestamp_ms=0, key=None, value=report, headers=(),
                                    schema="DriftWindowReport"))  # fmt: skip
                self.windows_offset += 1
            out = self.processor.process(batch, self.state)
            self.state.commit()
            new = [o.value for o in out.outputs if o.topic == ALERTS]
        self.alerts.extend(new)
        self.alert_positions.extend([self.fed] * len(new))
        return new

    def feed_all(self, records: Iterable[Record], batch: int = 250) -> None:
        chunk: list[Record] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= batch:
                self.feed(chunk)
                chunk = []
        if chunk:
            self.feed(chunk)

    def opened(self) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a["state"] == "open"]


def stream_records(
    values: np.ndarray,
    names: Sequence[str],
    *,
    partitions: int = 1,
    step_ms: int = 10,
    channels: Sequence[str | None] | None = None,
    headers: Mapping[int, tuple[tuple[str, bytes], ...]] | None = None,
) -> list[Record]:
    """Record i has event time i*step_ms and goes to partition i % partitions."""
    if channels is None:  # the reference mix, seeded
        channels = channel_stream(np.random.default_rng(len(values)), len(values), CHANNELS)
    records = []
    offsets = [0] * partitions
    for i, row in enumerate(values.tolist()):
        p = i % partitions
        channel = channels[i]
        extra = headers.get(i, ()) if headers else ()
        records.append(feature_record(p, offsets[p], i * step_ms, names, row, channel, extra))
        offsets[p] += 1
    return records


def channel_stream(rng: np.random.Generator, n: int, freqs: Mapping[str, float]) -> list[str]:
    names = list(freqs)
    probs = np.asarray([freqs[k] for k in names])
    return [names[i] for i in rng.choice(len(names), size=n, p=probs / probs.sum())]
