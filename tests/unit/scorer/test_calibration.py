"""Calibration fitted at training time: figures out of sample, stored in signed metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from services.performance.calibrations import ModelDirCalibrations
from services.scorer.artifact import METADATA_FILE, verify_version, write_version
from services.scorer.calibration import Calibration, expected_calibration_error, fit_calibration
from services.scorer.metadata import ModelMetadata
from tests.unit.scorer import modelkit


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A score whose square is the true probability: raw, it overstates every risk."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(size=n)
    labels = (rng.uniform(size=n) < scores**2).astype(int)
    return scores, labels


def test_isotonic_map_fixes_a_miscalibrated_score_out_of_sample() -> None:
    scores, labels = _overconfident(20_000, seed=3)
    cal = fit_calibration(scores, labels)
    assert cal.method == "isotonic"
    assert cal.rows == 10_000  # judged on the second half only
    # Raw: E|s - s^2| over uniform s is 1/6; calibrated, only sampling noise is left.
    assert abs(cal.ece_before - 1 / 6) < 0.02
    assert cal.ece_after < 0.02 < cal.ece_before
    assert cal.brier_after < cal.brier_before
    assert cal.calibrated is (cal.ece_after <= cal.max_ece)
    judge_s, judge_y = scores[10_000:], labels[10_000:]
    assert cal.ece_after == expected_calibration_error(cal.probability(judge_s), judge_y)


def test_a_calibrated_score_keeps_the_identity_map_when_the_fit_is_worse() -> None:
    rng = np.random.default_rng(5)
    scores = rng.uniform(size=2000)
    labels = (rng.uniform(size=2000) < scores).astype(int)
    cal = fit_calibration(scores, labels)
    if cal.method == "identity":
        assert cal.ece_after == cal.ece_before
        assert cal.probability([0.25]).tolist() == [0.25]
    else:  # the fitted map happened to be better on the judging half
        assert cal.ece_after <= cal.ece_before


def test_too_few_positives_or_too_large_an_error_is_not_calibrated() -> None:
    scores = np.linspace(0, 0.2, 400)
    labels = np.zeros(400, dtype=int)
    labels[[50, 350]] = 1  # one positive in the judging half
    cal = fit_calibration(scores, labels)
    assert cal.positives == 1
    assert not cal.calibrated
    strict = fit_calibration(*_overconfident(20_000, seed=4), max_ece=1e-9)
    assert not strict.calibrated and strict.max_ece == 1e-9


def _calibration() -> Calibration:
    return fit_calibration(*_overconfident(4000, seed=1))


def test_calibration_is_signed_with_the_metadata_and_read_by_the_performance_service(
    keys, model_dir: Path, public_key
) -> None:
    meta = modelkit.metadata("m", "1").model_copy(update={"calibration": _calibration()})
    path = write_version(model_dir, modelkit.logistic_model([1, 0, 0, 0]), meta, keys[0])
    loaded = verify_version(path, public_key).metadata.calibration
    assert loaded == meta.calibration
    assert ModelDirCalibrations(model_dir, keys[1])("m", "1") == meta.calibration
    # Editing the map after signing breaks the signature: the estimator gets nothing.
    doc = json.loads((path / METADATA_FILE).read_bytes())
    doc["calibration"]["probabilities"] = [1.0] * len(doc["calibration"]["probabilities"])
    (path / METADATA_FILE).write_text(json.dumps(doc))
    assert ModelDirCalibrations(model_dir, keys[1])("m", "1") is None
    assert ModelDirCalibrations(None, keys[1])("m", "1") is None


def test_metadata_written_before_calibration_existed_still_loads() -> None:
    doc = json.loads(modelkit.metadata("m", "1").to_json())
    del doc["calibration"]
    old = ModelMetadata.from_json(json.dumps(doc))
    assert old.calibration is None
