"""The drift service following a route (``predictions_route``): a version promoted to the
primary route is compared with the reference, so one whose scores look unlike the
reference's is score drift, where a service pinned to the reference's version only sees
its predictions stop."""

from __future__ import annotations

import numpy as np

from streamml.processor import Record
from tests.unit.drift.harness import Harness, make_processor, make_reference, stream_records

NAMES = ["f0", "f1", "f2", "f3"]


def promotion_stream(seed: int) -> list[Record]:
    """Features unchanged throughout; version 1 (scores like the reference's) serves the
    primary route, then version 2, whose scores are nearly constant, is promoted half-way.
    A canary of version 3 with odd scores serves every tenth record throughout."""
    rng = np.random.default_rng(seed)
    features = stream_records(rng.normal(size=(12_000, 4)), NAMES)
    out: list[Record] = []
    for i, record in enumerate(features):
        if i % 10 == 0:
            version, route, score = "3", "canary", float(rng.uniform(0.5, 1.0))
        elif i < 6_000:
            version, route, score = "1", "primary", float(rng.beta(1, 12))
        else:
            version, route, score = "2", "primary", 0.02 + float(rng.uniform(0, 1e-4))
        prediction = Record(
            topic="predictions", partition=0, offset=i, timestamp_ms=i * 10, key=b"k",
            value={"event_time": i * 10, "model_name": "synthetic", "model_version": version,
                   "score": score, "decision": score >= 0.3, "route": route},
            headers=(), schema="Prediction",
        )  # fmt: skip
        out += [record, prediction]
    return out


def score_alerts(harness: Harness) -> list[tuple[float, str]]:
    """(position of the alert in the input, detector) of opened alerts on the score."""
    return [
        (position, alert["detector"])
        for alert, position in zip(harness.alerts, harness.alert_positions, strict=True)
        if alert["state"] == "open" and alert["feature"] in ("score", "decision")
    ]


def test_a_version_promoted_to_the_followed_route_is_compared_with_the_reference() -> None:
    harness = Harness(make_processor(make_reference(), predictions_route="primary"))
    harness.feed_all(promotion_stream(41))
    alerts = score_alerts(harness)
    assert alerts, harness.alerts
    # nothing before the promotion (record 6,000 of each stream: input position 12,000),
    # although a canary with unlike scores served all along: only the route is followed
    assert all(position > 12_000 for position, _ in alerts), alerts
    assert [a for a in harness.alerts if a["signal"] == "drift" and a["feature"] in NAMES] == []


def test_pinned_to_the_reference_version_the_promoted_scores_are_not_seen() -> None:
    harness = Harness(make_processor(make_reference()))
    harness.feed_all(promotion_stream(41))
    assert score_alerts(harness) == []
