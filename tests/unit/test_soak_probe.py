"""The soak's latency probe (benchmarks/soak.py) reads only the event id of a prediction."""

from __future__ import annotations

from benchmarks.soak import LatencyProbe, TimedCodec
from services.demo.plan import DemoPlan
from streamml.codec import AvroCodec

PREDICTION = {
    "event_id": "0b6f4b0e-5d2c-4a8e-9a57-2f1f9c0d7e11",
    "entity_id": "card-00042",
    "event_time": 1_767_225_600_000,
    "scored_at": 1_767_225_600_120,
    "model_name": "fraud",
    "model_version": "v2",
    "score": 0.93,
    "threshold": 0.5,
    "decision": True,
    "route": "canary",
    "fallback_reason": None,
    "latency_ms": 1.7,
    "feature_set_hash": "5d41402abc4b2a76",
    "features_computed_at": 1_767_225_600_050,
    "segments": {"country": "DE", "channel": "web"},
}


def test_the_probe_decodes_the_event_id_and_skips_every_other_field() -> None:
    codec = AvroCodec()
    probe = LatencyProbe(DemoPlan(), {}, codec, TimedCodec(codec))
    value = codec.encode("Prediction", PREDICTION, topic="predictions")
    assert codec.decode(value, probe.schema) == {"event_id": PREDICTION["event_id"]}
    # Every field but the event id is dropped, so none is decoded.
    dropped = set(probe.schema.removeprefix("Prediction[").removesuffix("]").split(","))
    assert dropped == {f"-{name}" for name in PREDICTION if name != "event_id"}
