"""Bad input reaches the dead-letter topic byte-identical, with the reason; nothing is lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamml import deadletter as dl
from tests.integration.runtime_support import CODEC, counter_process, encoded, make_events
from tests.kafkatest import consume_all, create_topics, produce

pytestmark = [pytest.mark.integration, pytest.mark.dlq]


def test_bad_records_go_to_dlq_byte_identical_and_the_rest_is_processed(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=2, names=[f"{topic_prefix}example.out"])
    events = make_events(500, seed=3, n_entities=50)
    poison = dict(make_events(1, seed=99)[0])
    poison["payload"] = {**poison["payload"], "merchant_id": "raise"}
    label = {"event_id": "x", "entity_id": "c1", "label": 1, "labeled_at": 0, "source": ""}
    valid_body = CODEC.encode("Event", events[0])[10:]
    bad = {
        "garbage": (b"k1", os.urandom(64), [("trace", b"garbage")]),
        "wrong-magic": (b"k2", b"\x07\x01" + CODEC.encode("Event", events[1])[2:], []),
        "unknown-fingerprint": (b"k3", b"\xc3\x01" + b"\xee" * 8 + valid_body, []),
        "missing-field": (b"k4", CODEC.encode("Label", label), [("h", b"v")]),
        "raises": (
            poison["entity_id"].encode(),
            CODEC.encode("Event", poison),
            [("origin", b"test")],
        ),
    }
    stream = encoded(events[:250]) + list(bad.values()) + encoded(events[250:])
    produce(kafka_bootstrap, f"{topic_prefix}events", stream, partition=0)

    proc = counter_process(kafka_bootstrap, topic_prefix, logs_dir, batch=100).start()
    proc.wait_ready(60)
    outputs = consume_all(kafka_bootstrap, f"{topic_prefix}example.out", expect=len(events))
    dead = consume_all(kafka_bootstrap, f"{topic_prefix}events.dlq", expect=len(bad))
    code, health = proc.http("/healthz")
    assert code == 200 and proc.alive, health
    assert proc.terminate() == 0

    assert sorted(CODEC.decode(m.value(), "Label")["event_id"] for m in outputs) == sorted(
        e["event_id"] for e in events
    )
    assert len(dead) == len(bad)
    by_key = {m.key(): m for m in dead}
    for name, (key, value, headers) in bad.items():
        msg = by_key[key]
        assert msg.value() == value, name
        got = msg.headers() or []
        assert got[: len(headers)] == headers, name  # original headers first, unchanged
        meta = {k: v.decode() for k, v in got if k.startswith("dlq.")}
        assert meta[dl.H_SERVICE] == "example-counter"
        assert meta[dl.H_SOURCE_TOPIC] == f"{topic_prefix}events"
        assert meta[dl.H_SOURCE_PARTITION] == "0"
        assert int(meta[dl.H_SOURCE_OFFSET]) >= 250
        assert meta[dl.H_ATTEMPT] == "1"
        assert int(meta[dl.H_TIMESTAMP]) > 0
        assert meta[dl.H_ERROR_MESSAGE], name
        expected_stage = "process" if name == "raises" else "decode"
        assert meta[dl.H_STAGE] == expected_stage, name
        assert meta[dl.H_ERROR_CLASS] == ("ValueError" if name == "raises" else "decode")
    offsets = sorted(int(dict(m.headers())[dl.H_SOURCE_OFFSET]) for m in dead)
    assert offsets == list(range(250, 255))
