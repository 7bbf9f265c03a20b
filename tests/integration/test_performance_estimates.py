"""The performance service on the real broker, reading a signed model version's calibration
from the model directory: estimated metrics appear in its reports before any label of the
window's predictions, realized metrics once the labels come, the estimates still beside them."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.scorer.artifact import generate_keypair, load_private_key, write_version
from services.scorer.calibration import fit_calibration
from streamml.codec import AvroCodec
from tests.kafkatest import ServiceProcess, consume_all, create_topics, free_port, produce
from tests.unit.scorer import modelkit

pytestmark = pytest.mark.integration

CODEC = AvroCodec()
MIN = 60_000
T0 = 1_796_000_040_000  # a multiple of the 60 s report interval
PREDICTIONS = 600


def _prediction(eid: str, t: int, score: float) -> dict[str, Any]:
    return {
        "event_id": eid, "entity_id": "card-" + eid, "event_time": t, "scored_at": t,
        "model_name": "fraud", "model_version": "1", "score": score, "threshold": 0.5,
        "decision": score >= 0.5, "route": "primary", "fallback_reason": None,
        "latency_ms": 1.0, "feature_set_hash": "h", "features_computed_at": None,
        "segments": {"country": "US"},
    }  # fmt: skip


def _label(eid: str, a: int, y: int) -> dict[str, Any]:
    return {"event_id": eid, "entity_id": "card-" + eid, "label": y, "labeled_at": a,
            "source": "chargeback"}  # fmt: skip


def _signed_model(root: Path) -> tuple[Path, Path]:
    """fraud/1, signed, with a calibration fitted on scores that are probabilities."""
    private, public = generate_keypair(root / "keys")
    rng = np.random.default_rng(3)
    scores = rng.beta(2, 3, size=20_000)
    # Base rate ~40 %: ECE's sampling noise on 10,000 judging rows is ~0.01 by itself, so
    # the limit is above the demo's default (tuned for its 2 % base rate).
    labels = (rng.uniform(size=20_000) < scores).astype(int)
    calibration = fit_calibration(scores, labels, max_ece=0.03)
    assert calibration.calibrated
    meta = modelkit.metadata("fraud", "1").model_copy(update={"calibration": calibration})
    write_version(root / "models", modelkit.logistic_model([1, 0, 0, 0]), meta,
                  load_private_key(private))  # fmt: skip
    return root / "models", public


def _produce(bootstrap: str, topic: str, schema: str, values: list[dict[str, Any]]) -> None:
    produce(bootstrap, topic, [(v["entity_id"].encode(), CODEC.encode(schema, v), [])
                               for v in values])  # fmt: skip


def _model_reports(bootstrap: str, prefix: str) -> list[dict[str, Any]]:
    found = consume_all(bootstrap, prefix + "performance", idle_s=1.0, timeout_s=30)
    values = [CODEC.decode(m.value(), "PerformanceReport") for m in found]
    return [v for v in values if v["window"] == "sliding" and v["segment_field"] is None
            and v["route"] == "primary"]  # fmt: skip


def _report_at(bootstrap: str, prefix: str, end: int, timeout_s: float = 180.0) -> dict[str, Any]:
    """The model-level sliding report at window_end ``end``, polled until it is there."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = [r for r in _model_reports(bootstrap, prefix) if r["window_end"] == end]
        if got:
            return got[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for the report at {end}")


def test_estimates_before_labels_and_realized_metrics_after(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path, tmp_path: Path
) -> None:
    prefix = topic_prefix + "est."
    create_topics(kafka_bootstrap, prefix, partitions=1)
    model_dir, public_key = _signed_model(tmp_path)
    rng = random.Random(11)
    preds = [_prediction(f"e{i}", T0 + i * 1000, round(rng.betavariate(2, 3), 4))
             for i in range(PREDICTIONS)]  # fmt: skip
    # Phase 1: ten minutes of predictions and no label of theirs; one unrelated label moves
    # the labels stream's watermark (labels of older events keep flowing in real traffic).
    _produce(kafka_bootstrap, prefix + "predictions", "Prediction", preds)
    _produce(kafka_bootstrap, prefix + "labels", "Label", [_label("older", T0 + 15 * MIN, 0)])
    port = free_port()
    proc = ServiceProcess(
        ["-m", "services.performance"],
        {
            "STREAMML_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
            "STREAMML_PERFORMANCE_HTTP__PORT": str(port),
            "STREAMML_PERFORMANCE_RUNTIME__INSTANCE_ID": "a",
            "STREAMML_PERFORMANCE_REPORT_INTERVAL": "60",
            "STREAMML_PERFORMANCE_ALLOWED_LATENESS": "0",
            "STREAMML_PERFORMANCE_SEGMENT_FIELDS": '["country"]',
            "STREAMML_PERFORMANCE_SLO_MIN": "{}",
            "STREAMML_PERFORMANCE_MODEL_DIR": str(model_dir),
            "STREAMML_PERFORMANCE_PUBLIC_KEY_PATH": str(public_key),
            "STREAMML_PERFORMANCE_ESTIMATE_MIN_PREDICTIONS": "100",
        },
        http_port=port,
        log_path=logs_dir / "performance-estimates.log",
    ).start()
    try:
        proc.wait_ready(90)
        # The predictions' watermark is T0 + 599 s: the last boundary passed is T0 + 9 min.
        report = _report_at(kafka_bootstrap, prefix, T0 + 9 * MIN)
        assert report["labeled"] == 0 and report["roc_auc"] is None
        assert report["estimate_status"] == "calibrated"
        assert report["estimated_predictions"] == 541  # event times T0 .. T0 + 540 s
        assert 0.6 < report["estimated_roc_auc"] < 1.0
        assert report["estimated_precision"] is not None
        assert report["estimated_recall"] is not None

        # Phase 2: the labels arrive (drawn from the scores, which are the probabilities),
        # and both streams move on so the boundary after them is reported.
        labels = [_label(p["event_id"], T0 + 20 * MIN, int(rng.random() < p["score"]))
                  for p in preds]  # fmt: skip
        _produce(kafka_bootstrap, prefix + "labels", "Label", labels)
        _produce(kafka_bootstrap, prefix + "predictions", "Prediction",
                 [_prediction("end", T0 + 40 * MIN, 0.5)])  # fmt: skip
        _produce(kafka_bootstrap, prefix + "labels", "Label", [_label("end", T0 + 41 * MIN, 0)])
        report = _report_at(kafka_bootstrap, prefix, T0 + 21 * MIN)
        assert report["labeled"] == PREDICTIONS and report["roc_auc"] is not None
        assert report["estimate_status"] == "calibrated"
        # The labels follow the calibrated probabilities: realized and estimated agree
        # within what 600 labels can tell (4 Hanley-McNeil standard errors).
        auc, positives = report["estimated_roc_auc"], sum(v["label"] for v in labels)
        negatives = PREDICTIONS - positives
        q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
        se = math.sqrt((auc * (1 - auc) + (positives - 1) * (q1 - auc**2)
                        + (negatives - 1) * (q2 - auc**2)) / (positives * negatives))  # fmt: skip
        assert abs(report["roc_auc"] - auc) < 4 * se
        assert proc.terminate() == 0
    finally:
        proc.stop()
