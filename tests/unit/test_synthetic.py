"""The synthetic card-transaction generator: reproducible, schema-shaped, with a fraud signal."""

from __future__ import annotations

import json
import random
from pathlib import Path
from statistics import median

import fastavro
import pytest

from streamml.synthetic import Drift, generate_events, label_delay_ms, label_record

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _parsed(name: str) -> dict:
    return fastavro.parse_schema(json.loads((SCHEMAS / name).read_text()))


def test_same_seed_same_events_other_seed_other_events() -> None:
    first = list(generate_events(2000, seed=11))
    assert first == list(generate_events(2000, seed=11))
    assert first != list(generate_events(2000, seed=12))


def test_events_match_the_avro_schema_and_are_in_event_time_order() -> None:
    schema = _parsed("event.avsc")
    events = [event for event, _ in generate_events(3000, seed=3)]
    for event in events:
        assert fastavro.validate(event, schema, raise_errors=True)
    times = [event["event_time"] for event in events]
    assert times == sorted(times)
    assert len({event["event_id"] for event in events}) == len(events)


def test_fraud_share_is_near_the_requested_rate() -> None:
    labels = [label for _, label in generate_events(40_000, seed=5, fraud_rate=0.03)]
    assert 0.02 < sum(labels) / len(labels) < 0.04


def test_fraud_comes_in_bursts_of_one_card_with_higher_amounts() -> None:
    pairs = list(generate_events(30_000, seed=8))
    fraud = [event for event, label in pairs if label]
    legit = [event for event, label in pairs if not label]
    # Several fraudulent transactions per compromised card.
    cards = {event["entity_id"] for event in fraud}
    assert len(fraud) / len(cards) > 2.0
    assert median(e["payload"]["amount"] for e in fraud) > 3 * median(
        e["payload"]["amount"] for e in legit
    )
    foreign = sum(e["payload"]["country"] not in ("DE", "FR", "NL", "ES", "IT") for e in fraud)
    assert foreign / len(fraud) > 0.4


def test_drift_shifts_amounts_and_country_mix_after_drift_at() -> None:
    n, at = 20_000, 10_000
    pairs = list(generate_events(n, seed=4, drift_at=at, drift=Drift(amount_factor=3.0)))
    before = [e for e, label in pairs[:at] if not label]
    after = [e for e, label in pairs[at:] if not label]
    assert median(e["payload"]["amount"] for e in after) > 2 * median(
        e["payload"]["amount"] for e in before
    )
    assert pairs[:at] == list(generate_events(n, seed=4))[:at]


def test_label_delay_is_positive_and_mostly_shorter_than_a_day() -> None:
    rng = random.Random(1)
    delays = [label_delay_ms(rng) for _ in range(5000)]
    assert min(delays) > 0
    assert max(delays) <= 30 * 86_400_000
    assert 0.4 < sum(d < 86_400_000 for d in delays) / len(delays) < 0.8


def test_label_record_matches_the_label_schema() -> None:
    schema = _parsed("label.avsc")
    event, label = next(generate_events(1, seed=2))
    record = label_record(event, label, random.Random(0))
    assert fastavro.validate(record, schema, raise_errors=True)
    assert record["labeled_at"] > event["event_time"]


def test_label_delay_scale_shortens_the_delay_and_keeps_the_source() -> None:
    events = [event for event, _ in generate_events(200, seed=3)]
    full = [label_record(e, 0, rng) for rng in [random.Random(9)] for e in events]
    scaled = [label_record(e, 0, rng, 1 / 7) for rng in [random.Random(9)] for e in events]
    for event, a, b in zip(events, full, scaled, strict=True):
        delay = a["labeled_at"] - event["event_time"]
        assert abs(b["labeled_at"] - event["event_time"] - delay / 7) <= 1
        assert a["source"] == b["source"]  # named by the delay as drawn
    assert {r["source"] for r in scaled} == {"analyst", "chargeback"}


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        list(generate_events(1, seed=0, rate_per_s=0))
