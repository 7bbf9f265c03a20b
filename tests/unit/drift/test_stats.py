"""Window statistics against scipy's reference implementations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats

from services.drift import stats
from services.drift.reference import (
    Reference,
    load_reference,
    reference_from_mapping,
    synthetic_reference,
)
from streamml.errors import ConfigError


def test_binned_ks_matches_scipy_within_one_percentile() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=50_000)
    ref = load_reference_from(synthetic_reference({"x": train}, sample_size=2_000))
    for shift in (0.0, 0.2, 1.0):
        window = rng.normal(shift, 1, size=1_000)
        counts = np.bincount(np.searchsorted(ref.numeric["x"].ks_grid, window, side="left"),
                             minlength=ref.numeric["x"].ks_bins)  # fmt: skip
        d, p = stats.ks_binned(ref.numeric["x"].ks_reference_cdf, counts, 2_000)
        sample = np.asarray(synthetic_reference({"x": train}, sample_size=2_000)
                            ["reference"]["features"]["x"]["sample"])  # fmt: skip
        exact = scipy_stats.ks_2samp(window, sample)
        assert exact.statistic - 0.02 <= d <= exact.statistic + 1e-9
        assert (p < 0.01) == (exact.pvalue < 0.01)


def test_psi_of_the_reference_itself_is_zero_and_grows_with_shift() -> None:
    expected = np.array([0.1] * 10)
    assert stats.psi(expected, np.array([100] * 10)) == pytest.approx(0.0, abs=1e-12)
    small = stats.psi(expected, np.array([130, 120, 110, 100, 100, 100, 90, 90, 80, 80]))
    large = stats.psi(expected, np.array([400, 200, 100, 100, 100, 50, 20, 10, 10, 10]))
    assert 0 < small < 0.1 < 0.25 < large


def test_chi_square_matches_scipy() -> None:
    expected = np.array([0.5, 0.3, 0.2])
    counts = np.array([60, 25, 15])
    mine = stats.chi_square(expected, counts)
    theirs = scipy_stats.chisquare(counts, expected * counts.sum())
    assert mine == pytest.approx((theirs.statistic, theirs.pvalue))


def test_benjamini_hochberg_matches_scipy() -> None:
    p = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]
    assert stats.benjamini_hochberg(p) == pytest.approx(scipy_stats.false_discovery_control(p))


def load_reference_from(document: dict[str, Any]) -> Reference:
    return reference_from_mapping(document)


def test_loads_model_metadata_written_by_the_scorer(tmp_path: Path) -> None:
    metadata = pytest.importorskip("services.scorer.metadata")
    rng = np.random.default_rng(1)
    amount = rng.lognormal(3, 1, size=5_000).tolist()
    score = rng.beta(1, 10, size=5_000).tolist()
    meta = metadata.ModelMetadata(
        model_name="fraud", model_version="3", created_at="2026-11-22T00:00:00Z",
        algorithm="test", feature_set="card", feature_set_version="1", feature_set_hash="h",
        input_names=["amount", "hour"], threshold=0.4,
        reference=metadata.ReferenceDistributions(
            features={"amount": metadata.numeric_reference(amount)},
            score=metadata.numeric_reference(score),
            categories={"channel": {"pos": 0.7, "ecommerce": 0.3}}, rows=5_000),
    )  # fmt: skip
    version = tmp_path / "3"
    version.mkdir()
    (version / "metadata.json").write_bytes(meta.to_json())
    ref = load_reference(version)
    assert (ref.model_name, ref.model_version, ref.threshold) == ("fraud", "3", 0.4)
    assert ref.input_names == ("amount", "hour") and ref.feature_names == ("amount",)
    assert ref.numeric["amount"].bins == len(meta.reference.features["amount"].edges) + 1
    assert ref.positive_rate == pytest.approx(np.mean(np.asarray(
        meta.reference.score.sample) >= 0.4))  # fmt: skip


def test_standalone_reference_and_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    doc = synthetic_reference({"x": rng.normal(size=1_000)})
    standalone = tmp_path / "ref.json"
    standalone.write_text(json.dumps(doc["reference"]))
    assert load_reference(standalone).feature_names == ("x",)
    with pytest.raises(ConfigError, match="does not exist"):
        load_reference(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_reference(tmp_path / "bad.json")
    broken = dict(doc["reference"])
    broken["features"] = {"x": {"edges": [1.0, 0.0], "counts": [1, 1, 1], "mean": 0, "std": 1}}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match="ascending"):
        load_reference(tmp_path / "broken.json")
