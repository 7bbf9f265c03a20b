"""The label join: a prediction and its label meet in the join store, in either order.

- a prediction waits for its label until ``event_time + label_horizon`` (then expiry counts
  it as unlabeled, see :mod:`services.performance.expiry`);
- a label that comes first waits ``early_label_grace`` past its ``labeled_at``; a label
  whose ``labeled_at - event_time`` is over the horizon is rejected as ``late``;
- a second label with another value is a correction (metrics use the latest, it is
  counted); an identical label and a second prediction for the same event_id and route are
  duplicates and ignored. An entry keeps its label history, so a prediction that joins
  late replays the first label and each correction at their own event times.

A prediction that met its label becomes a :class:`Sample` of the ``metrics`` store; a label
change becomes a :class:`Correction`; both wait there for the watermark (release).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from services.performance.catalog import Catalog
from services.performance.dead_letters import JOIN_STAGE, WaitingLabelDeadLetters
from services.performance.estimation import Estimator
from services.performance.metrics import PerformanceMetrics
from services.performance.partitions import (
    EventTimeRules,
    PartitionStores,
    PartitionView,
    ceil_div,
)
from services.performance.quality import NO_TIME
from services.performance.state_layout import (
    CORRECTED,
    CORRECTION_PREFIX,
    EARLY_LABEL,
    EXPIRED,
    MAX_LABELS,
    NO_LABEL,
    PENDING,
    PREDICTED,
    SAMPLE_PREFIX,
    TOMBSTONE,
    Correction,
    Entry,
    LabelOrigin,
    Prediction,
    Sample,
    StateLayout,
    event_digest,
    sample_key,
)
from streamml.errors import StreamMLError
from streamml.processor import Output, Record, Rejection, Result


def _millis(value: Any) -> int:
    if isinstance(value, int):
        return value
    if hasattr(value, "timestamp"):  # a datetime from a reader that keeps logical types
        return int(value.timestamp() * 1000)
    raise StreamMLError(f"not a timestamp: {value!r}")


@dataclass(frozen=True, slots=True)
class JoinParts:
    """What the join and the boundary work share: layouts, rules, stores, ids, outlets."""

    layout: StateLayout
    rules: EventTimeRules
    stores: PartitionStores
    catalog: Catalog
    dead_letters: WaitingLabelDeadLetters
    metrics: PerformanceMetrics
    estimator: Estimator | None = None  # sees every counted prediction (CBPE estimates)


class LabelJoin:
    """Adds predictions and labels to the join store and turns their meeting into samples."""

    def __init__(self, parts: JoinParts, *, streams: dict[str, int]) -> None:
        self._layout = parts.layout
        self._stores = parts.stores
        self._catalog = parts.catalog
        self._dead_letters = parts.dead_letters
        self._metrics = parts.metrics
        self._estimator = parts.estimator
        self._stream = streams  # input topic -> index of its watermark in a view's marks
        self._horizon = parts.rules.label_horizon
        self._grace = parts.rules.early_label_grace
        self._memory = parts.rules.late_label_memory

    def note_time(self, view: PartitionView, record: Record, raw: Any) -> int:
        """A record's event time in ms, noted as the partition's oldest and its stream's mark."""
        t = raw if type(raw) is int else _millis(raw)
        if view.min_ts == NO_TIME or t < view.min_ts:
            view.min_ts = t
        marks, stream = view.marks, self._stream[record.topic]
        marks[stream] = max(marks[stream], t)
        return t

    # -- predictions ------------------------------------------------------------------

    def add_prediction(self, view: PartitionView, record: Record, result: Result) -> None:
        """A prediction record: validated, interned, then joined with what its event has."""
        value = record.value
        t = self.note_time(view, record, value["event_time"])
        score, threshold = value["score"], value["threshold"]
        if not (0.0 <= score <= 1.0 and math.isfinite(threshold)):  # NaN fails both
            result.rejections.append(
                Rejection(record, "validation.score",
                          f"score must be in [0, 1] and threshold finite, got {score!r}, "
                          f"{threshold!r}")
            )  # fmt: skip
            return
        digest = event_digest(str(value["event_id"]))
        model_id = self._catalog.model_id(view, value)
        segments = self._catalog.segment_ids(view, value)
        prediction: Prediction = (model_id, float(value["score"]), bool(value["decision"]),
                                  segments)  # fmt: skip
        raw = self._stores.join.get(view.partition, digest)
        entry = None if raw is None else self._layout.unpack_entry(raw)
        if entry is not None and entry.kind == TOMBSTONE:
            self._metrics.on_event("duplicate_prediction")  # seen and expired already
            return
        if entry is None and view.boundary != NO_TIME and t + self._horizon <= view.boundary:
            self._too_old(view, digest, t, prediction)
            return
        if entry is not None and entry.kind == EARLY_LABEL:
            if t <= entry.time + self._grace:
                self._meet_early_label(view, digest, entry, t=t, prediction=prediction,
                                       outputs=result.outputs)  # fmt: skip
                return
            # The label waited its grace period (in event time) and the prediction came
            # after it: the label is an orphan; the prediction waits for another label.
            self._dead_letters.orphan(entry, "the prediction came after early_label_grace",
                                      result.outputs)  # fmt: skip
            entry = None
        if entry is None:
            self._count_prediction(view, t, prediction)
            packed = self._layout.pack_first_prediction(t, prediction)
            self._stores.join.put(view.partition, digest, packed)
            view.index_expiry(digest, t + self._horizon)
            return
        self._add_route(view, digest, entry, t, prediction)

    def _count_prediction(self, view: PartitionView, t: int, prediction: Prediction) -> None:
        """One more prediction in the interval of ``t``; the estimator, if any, sees its score."""
        groups = self._catalog.groups(prediction[0], prediction[3])
        view.count(t, groups, PREDICTED)
        if self._estimator is not None:
            k = ceil_div(view.effective_time(t), view.interval)
            self._estimator.observe(view, self._stores.metrics, k, groups,
                                    model=view.models[prediction[0]], score=prediction[1],
                                    decision=prediction[2])  # fmt: skip

    def _too_old(self, view: PartitionView, digest: bytes, t: int, prediction: Prediction) -> None:
        """Older than the horizon: its label can no longer be joined. Count it as an
        unlabeled prediction now, and remember it so a label for it is 'late'."""
        self._metrics.on_event("late_prediction")
        groups = self._catalog.groups(prediction[0], prediction[3])
        self._count_prediction(view, t, prediction)
        view.count(t, groups, EXPIRED)
        deadline = t + self._horizon + self._memory
        if deadline > view.boundary:
            self._stores.join.put(view.partition, digest,
                                  self._layout.pack_entry(Entry(TOMBSTONE, deadline)))  # fmt: skip
            view.index_expiry(digest, deadline)

    def _meet_early_label(
        self,
        view: PartitionView,
        digest: bytes,
        entry: Entry,
        *,
        t: int,
        prediction: Prediction,
        outputs: list[Output],
    ) -> None:
        """The prediction of labels that came first: the same horizon rule as for a label
        that comes second."""
        joined = [(y, a, 0) for y, a, _ in entry.labels if a - t <= self._horizon]
        for index, (_, a, repeats) in enumerate(entry.labels):
            if a - t > self._horizon:
                # Each copy, as each would have been rejected had it come second.
                why = f"labeled {a - t} ms after the event; horizon {self._horizon} ms"
                for _ in range(1 + repeats):
                    self._dead_letters.send(entry, index, reason="late", message=why,
                                            outputs=outputs)  # fmt: skip
        pending = Entry(PENDING, t, labels=joined)
        pending.predictions.append(prediction)
        self._count_prediction(view, t, prediction)
        if joined:
            self._join_sample(view, digest, pending, prediction)
        self._stores.join.put(view.partition, digest, self._layout.pack_entry(pending))
        view.index_expiry(digest, t + self._horizon)

    def _add_route(
        self, view: PartitionView, digest: bytes, entry: Entry, t: int, prediction: Prediction
    ) -> None:
        """A PENDING event's prediction by another route, or a duplicate."""
        route = view.models[prediction[0]][2]
        if any(view.models[p[0]][2] == route for p in entry.predictions):
            self._metrics.on_event("duplicate_prediction")
            return
        entry.predictions.append(prediction)
        self._count_prediction(view, t, prediction)
        if entry.labels:
            self._join_sample(view, digest, entry, prediction)
        self._stores.join.put(view.partition, digest, self._layout.pack_entry(entry))

    # -- labels -----------------------------------------------------------------------

    def add_label(self, view: PartitionView, record: Record, result: Result) -> None:
        """A label record: waits for its prediction, joins it, corrects it, or is rejected."""
        value = record.value
        a = self.note_time(view, record, value["labeled_at"])
        label = value["label"]
        if label not in (0, 1):
            result.rejections.append(
                Rejection(record, "validation.label", f"label must be 0 or 1, got {label!r}")
            )
            return
        digest = event_digest(str(value["event_id"]))
        raw = self._stores.join.get(view.partition, digest)
        if raw is None:
            self._wait_for_prediction(view, digest, record, a)
            return
        entry = self._layout.unpack_entry(raw)
        if entry.kind == TOMBSTONE:
            self._late(record, result, "its prediction expired (label_horizon passed)")
            return
        if label == entry.label:
            self._repeat(view, digest, entry)
            return
        if entry.kind == PENDING and a - entry.time > self._horizon:
            self._late(record, result, f"labeled {a - entry.time} ms after the event; "
                       f"label_horizon is {self._horizon} ms")  # fmt: skip
            return
        if len(entry.labels) >= MAX_LABELS:
            result.rejections.append(
                Rejection(record, "corrections.limit",
                          f"event already has {MAX_LABELS} labels; this one is not used",
                          JOIN_STAGE)
            )  # fmt: skip
            return
        self._add_to_history(view, digest, entry, label, a)

    def _wait_for_prediction(
        self, view: PartitionView, digest: bytes, record: Record, labeled_at: int
    ) -> None:
        value = record.value
        origin = LabelOrigin(str(value["event_id"]), str(value["entity_id"]),
                             str(value.get("source") or ""), record.topic,
                             record.partition, record.offset, record.timestamp_ms,
                             key=record.key, value=record.raw_value,
                             headers=tuple((k, v or b"") for k, v in record.headers))  # fmt: skip
        entry = Entry(EARLY_LABEL, labeled_at, labels=[(value["label"], labeled_at, 0)],
                      origin=origin)  # fmt: skip
        self._stores.join.put(view.partition, digest, self._layout.pack_entry(entry))
        view.index_expiry(digest, labeled_at + self._grace)

    def _repeat(self, view: PartitionView, digest: bytes, entry: Entry) -> None:
        """The same label again: ignored (counted, so a waiting one's copies are known)."""
        self._metrics.on_event("duplicate_label")
        if entry.kind == EARLY_LABEL:
            y, at, repeats = entry.labels[-1]
            entry.labels[-1] = (y, at, repeats + 1)
            self._stores.join.put(view.partition, digest, self._layout.pack_entry(entry))

    def _add_to_history(
        self, view: PartitionView, digest: bytes, entry: Entry, label: int, a: int
    ) -> None:
        """A first label or a correction: joined with the event's predictions, if any."""
        old = entry.label
        entry.labels.append((label, a, 0))
        self._stores.join.put(view.partition, digest, self._layout.pack_entry(entry))
        if entry.kind == EARLY_LABEL or not entry.predictions:
            if old != NO_LABEL:
                self._metrics.on_event("correction")
            return
        if old == NO_LABEL:
            for prediction in entry.predictions:
                self._join_sample(view, digest, entry, prediction)
            return
        self._metrics.on_event("correction")
        first_at = entry.labels[0][1]
        for prediction in entry.predictions:
            key = sample_key(digest, prediction[0])
            sample_ts = view.effective_time(max(entry.time, first_at))
            sample = view.samples.get(key)
            if sample is not None:
                sample_ts = sample.ts
            self._correct(view, key, seq=len(entry.labels) - 1, old=old, new=(label, a),
                          sample_ts=sample_ts, prediction=prediction)  # fmt: skip

    def _late(self, record: Record, result: Result, why: str) -> None:
        self._metrics.on_event("late_label")
        result.rejections.append(Rejection(record, "late", f"label too late: {why}", JOIN_STAGE))

    # -- samples and corrections ------------------------------------------------------

    def _join_sample(
        self, view: PartitionView, digest: bytes, entry: Entry, prediction: Prediction
    ) -> None:
        """A prediction met its label: a sample with the first label, then each correction.

        Replaying the label history (instead of taking the latest label) gives every
        contribution the same event time whichever of prediction and labels came first.
        """
        model_id, score, decision, segments = prediction
        first, first_at, _ = entry.labels[0]
        ts = view.effective_time(max(entry.time, first_at))
        sample = Sample(ts, score, decision, first, first_at - entry.time, segments)
        key = sample_key(digest, model_id)
        view.samples[key] = sample
        view.unreleased.add(key)
        view.index_release(key, sample.ts)
        self.put_sample(view, key, sample)
        for seq in range(1, len(entry.labels)):
            self._correct(view, key, seq=seq, old=entry.labels[seq - 1][0],
                          new=entry.labels[seq][:2], sample_ts=sample.ts,
                          prediction=prediction)  # fmt: skip

    def _correct(
        self,
        view: PartitionView,
        key: bytes,
        *,
        seq: int,
        old: int,
        new: tuple[int, int],
        sample_ts: int,
        prediction: Prediction,
    ) -> None:
        model_id, score, decision, segments = prediction
        ts = view.effective_time(max(new[1], sample_ts))
        fix = Correction(ts, old, new[0], score, decision, segments)
        fix_key = key + bytes([seq])
        view.corrections[fix_key] = fix
        self._stores.metrics.put(view.partition, CORRECTION_PREFIX + fix_key,
                                 self._layout.pack_correction(fix))  # fmt: skip
        view.count(ts, self._catalog.groups(model_id, segments), CORRECTED)

    def put_sample(self, view: PartitionView, key: bytes, sample: Sample) -> None:
        self._stores.metrics.put(view.partition, SAMPLE_PREFIX + key,
                                 self._layout.pack_sample(sample))  # fmt: skip
