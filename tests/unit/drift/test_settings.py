"""Drift settings from the environment, and per-feature detector parameters."""

from __future__ import annotations

import numpy as np
import pytest

from services.drift.detectors import DetectorParams
from services.drift.settings import DriftSettings
from streamml.errors import ConfigError
from streamml.settings import load_settings
from tests.unit.drift.harness import Harness, make_processor, make_reference, stream_records


def test_nested_and_per_feature_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMML_DRIFT_TESTS__PSI_ALERT", "0.3")
    monkeypatch.setenv("STREAMML_DRIFT_DETECTORS__ADWIN_DELTA", "0.001")
    monkeypatch.setenv("STREAMML_DRIFT_FEATURE_DETECTORS", '{"amount": {"ph_threshold": 80}}')
    monkeypatch.setenv("STREAMML_DRIFT_STATE_KEY", "s3cret")
    settings = load_settings(DriftSettings)
    assert settings.tests.psi_alert == 0.3
    assert settings.detectors.adwin_delta == 0.001
    assert settings.feature_detectors["amount"].ph_threshold == 80
    assert "s3cret" not in repr(settings)


def test_bad_setting_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMML_DRIFT_TESTS__KS_ALPHA", "2")
    with pytest.raises(ConfigError) as info:
        load_settings(DriftSettings)
    assert "STREAMML_DRIFT_TESTS__KS_ALPHA" in str(info.value)
    assert "\n" not in str(info.value)


def test_per_feature_detector_parameters_apply_to_that_feature_only() -> None:
    rng = np.random.default_rng(12)
    values = rng.normal(size=(12_000, 4))
    values[6_000:, :2] += 1.0  # f0 and f1 shift together
    quiet = {"f0": DetectorParams(adwin=False, page_hinkley=False, spread=False)}
    harness = Harness(make_processor(make_reference(), feature_detectors=quiet))
    harness.feed_all(stream_records(values, ["f0", "f1", "f2", "f3"]))
    fired = {(d["feature"], d["detector"]) for r in harness.reports for d in r["detections"]}
    assert ("f1", "adwin") in fired and ("f1", "page_hinkley") in fired
    assert not any(feature == "f0" for feature, _ in fired)
    assert {a["feature"] for a in harness.opened()} == {"f0", "f1"}  # window tests still see f0
