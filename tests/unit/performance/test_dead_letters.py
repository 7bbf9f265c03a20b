"""A label that waited in state is dead-lettered as the runtime would have dead-lettered its
record: same topic, key, value bytes and headers (``streamml.deadletter.dead_letter``)."""

from __future__ import annotations

import dataclasses

from services.performance.state_layout import EARLY_LABEL, Entry, LabelOrigin, StateLayout
from streamml.codec import AvroCodec
from streamml.deadletter import dead_letter
from streamml.processor import Output, Record
from streamml.runtime.executor import Polled

from .support import LABELS, MIN, T0, label, new_state, processor, run, tick

CLOCK_MS = 1000  # support.processor's clock says 1.0 s


def _as_read(record: Record, *, key: bytes, headers: tuple[tuple[str, bytes], ...]) -> Record:
    """``record`` as the runtime hands it over: value bytes, a key and headers of its own."""
    raw = AvroCodec().encode("Label", record.value)
    return dataclasses.replace(record, key=key, headers=headers, raw_value=raw)


def _runtime_letter(record: Record, reason: str, message: str) -> Output:
    source = Polled(
        record.topic,
        record.partition,
        record.offset,
        record.timestamp_ms,
        record.key,
        record.raw_value,
        record.headers,
    )  # what the runtime read
    letter = dead_letter(source, reason=reason, message=message, service="performance",
                         stage="join", now_ms=CLOCK_MS)  # fmt: skip
    return Output(topic=letter.topic, schema="Label", value=record.value, key=letter.key,
                  headers=tuple(letter.headers), raw_value=letter.value)  # fmt: skip


def _dead_letters(outputs: list[Output]) -> list[Output]:
    return [o for o in outputs if o.topic == LABELS + ".dlq"]


def test_an_orphan_is_the_runtime_dead_letter_of_its_record() -> None:
    headers = (("replay.source", b"t.labels/0/7"), ("trace", b"abc"), ("redrive.attempt", b"2"))
    waiting = _as_read(label("x", T0 + 1000, 1), key=b"customer-9", headers=headers)
    proc, state = processor(), new_state()
    result = run(proc, state, [[waiting]] + [tick(T0 + m * MIN) for m in range(1, 13)])
    letters = [o for o in _dead_letters(result.outputs) if o.value["event_id"] == "x"]
    message = "event_id x: no prediction for this event_id: no prediction within early_label_grace"
    assert letters == [_runtime_letter(waiting, "orphan", message)]
    kept = dict(letters[0].headers)
    assert kept["trace"] == b"abc" and kept["dlq.attempt"] == b"3"  # the source's own, kept


def test_a_correction_that_waited_with_its_label_is_re_encoded() -> None:
    first = _as_read(label("x", T0 + 1000, 1), key=b"k", headers=())
    correction = label("x", T0 + 2000, 0)
    proc, state = processor(), new_state()
    result = run(proc, state, [[first], [correction]] + [tick(T0 + m * MIN) for m in range(1, 13)])
    (letter,) = [o for o in _dead_letters(result.outputs) if o.value["event_id"] == "x"]
    assert letter.raw_value is None  # not the first label's bytes: encoded from the value
    assert (letter.value["label"], letter.value["labeled_at"], letter.key) == (0, T0 + 2000, b"k")


def test_entries_written_before_the_record_was_kept_still_decode() -> None:
    layout = StateLayout(segment_fields=1, input_topics=3)
    origin = LabelOrigin("x", "e-x", "chargeback", LABELS, 0, 5, 0, key=b"e-x", value=b"\x01")
    packed = layout.pack_entry(Entry(EARLY_LABEL, T0, labels=[(1, T0, 0)], origin=origin))
    assert layout.unpack_entry(packed).origin == origin
    old = packed[: packed.index(b"chargeback" + LABELS.encode()) + len("chargeback" + LABELS)]
    legacy = layout.unpack_entry(old).origin
    assert legacy == dataclasses.replace(origin, value=None)  # key: the entity_id, as before
