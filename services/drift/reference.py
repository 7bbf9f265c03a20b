"""The training reference the drift tests compare live traffic against.

A reference is read from a model version's ``metadata.json`` (written by the scorer's
tooling, see ``services/scorer/metadata.py``) or from a standalone reference JSON with the
same keys. The keys read are::

    model_name, model_version      identity of the model (optional in a standalone file)
    input_names                    feature names in model input order
    threshold                      decision threshold (score >= threshold -> positive)
    reference.features.<name>      {edges, counts, sample, mean, std} per numeric feature
    reference.score                {edges, counts, sample, mean, std} of the model score
    reference.categories.<attr>    {value: frequency} per categorical attribute
    reference.rows                 training rows (informational)

``edges`` are the inner quantile cut points: bin ``i`` holds ``edges[i-1] <= x < edges[i]``
and the outer bins are open-ended (``numpy.searchsorted(edges, x, side="right")``), the
same binning the scorer used to count ``counts``. A standalone file may also hold the
``reference`` object's keys at the top level.

>>> ref = reference_from_mapping({
...     "model_name": "m", "model_version": "1", "input_names": ["x"], "threshold": 0.5,
...     "reference": {"features": {"x": {"edges": [0.0], "counts": [5, 5],
...                   "sample": [-1.0, 1.0], "mean": 0.0, "std": 1.0}},
...                   "score": {"edges": [0.5], "counts": [9, 1], "sample": [0.1, 0.7],
...                   "mean": 0.2, "std": 0.1}, "categories": {"c": {"a": 0.5, "b": 0.5}},
...                   "rows": 10}})
>>> ref.numeric["x"].bins, ref.categorical["c"].categories
(2, ('__other__', 'a', 'b'))
>>> ref.positive_rate
0.5
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamml.errors import ConfigError

OTHER_CATEGORY = "__other__"
"""Bucket for categories absent from the reference (same name as the scorer's tail pool)."""

MIN_PROPORTION = 1e-4
"""Floor for an expected bin proportion, so an empty training bin does not make PSI infinite."""

KS_GRID_POINTS = 99
"""Quantiles of the reference sample at which window CDFs are compared (binned KS)."""

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class NumericReference:
    """Training distribution of one numeric value, prepared for fast window tests."""

    name: str
    edges: FloatArray
    """Inner PSI cut points (ascending); ``len(edges) + 1`` bins."""
    expected: FloatArray
    """Training share per PSI bin, floored at :data:`MIN_PROPORTION`, renormalised."""
    ks_grid: FloatArray
    """Distinct quantiles of the reference sample where the CDFs are compared."""
    ks_reference_cdf: FloatArray
    """Reference sample CDF at each ``ks_grid`` point."""
    pit_scores: FloatArray
    """Per KS-grid interval, the standardised mid reference CDF (probability integral
    transform): what the streaming detectors see instead of the raw value. Mean 0 and
    sd 1 under the reference whatever its shape, so heavy tails and skew (amounts) do not
    set off ADWIN or Page-Hinkley, and one parameter set fits every feature."""
    sample_size: int
    mean: float
    std: float
    warmup_ms: int = 0
    """Event time after a stream starts before this feature is compared (history features)."""
    distinct_values: int = 0
    """Distinct values in the reference sample (2 for a flag or a one-hot column)."""

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    @property
    def ks_bins(self) -> int:
        return len(self.ks_grid) + 1


@dataclass(frozen=True)
class CategoricalReference:
    """Training frequencies of one categorical attribute; index 0 is ``__other__``."""

    name: str
    categories: tuple[str, ...]
    expected: FloatArray
    index: Mapping[str, int] = field(repr=False)
    sample_size: int = 0
    """Training records the frequencies were counted on (``reference.rows``); the
    chi-square test treats the reference as a sample of this size (0: as exact)."""

    def bucket(self, value: str) -> int:
        """Index of ``value``'s bucket (unknown values pool under ``__other__``)."""
        return self.index.get(value, 0)


@dataclass(frozen=True)
class Reference:
    """Everything the drift service compares against, from one model version."""

    model_name: str | None
    model_version: str | None
    threshold: float | None
    input_names: tuple[str, ...]
    """Every model input, in input order (how a FeatureVector without names is read)."""
    feature_names: tuple[str, ...]
    """Monitored numeric features (those with a reference), in model input order."""
    numeric: Mapping[str, NumericReference]
    score: NumericReference | None
    categorical: Mapping[str, CategoricalReference]
    positive_rate: float | None
    """Share of the reference score sample at or above ``threshold``."""
    positive_rate_sample: int
    """Size of that score sample: the positive-share test includes its standard error."""
    fingerprint: str
    """SHA-256 (hex, 16 chars) of the canonical reference JSON; reports carry it."""


def load_reference(path: str | Path) -> Reference:
    """Read a model version directory, its ``metadata.json``, or a standalone reference JSON."""
    source = Path(path)
    if source.is_dir():
        source = source / "metadata.json"
    try:
        document = json.loads(source.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"drift reference {source} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"drift reference {source} is not readable JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"drift reference {source} must hold a JSON object")
    try:
        return reference_from_mapping(document)
    except ConfigError as exc:
        raise ConfigError(f"drift reference {source}: {exc}") from exc


def reference_from_mapping(document: Mapping[str, Any]) -> Reference:
    """Build a :class:`Reference` from parsed metadata or standalone reference JSON."""
    distributions = document.get("reference")
    if distributions is None and "features" in document:
        distributions = document  # standalone file with the distributions at the top level
    if not isinstance(distributions, Mapping):
        raise ConfigError("no 'reference' distributions (model metadata without references?)")
    features = distributions.get("features") or {}
    if not isinstance(features, Mapping):
        raise ConfigError("'reference.features' must be an object of feature -> distribution")
    names = document.get("input_names") or list(features)
    numeric = {}
    for name in names:
        if name in features:
            numeric[name] = _numeric(name, features[name])
    score_doc = distributions.get("score")
    score = _numeric("score", score_doc) if score_doc else None
    rows = distributions.get("rows")
    rows = int(rows) if isinstance(rows, int | float) and rows > 0 else 0
    categorical = {
        attr: _categorical(attr, freqs, rows)
        for attr, freqs in sorted((distributions.get("categories") or {}).items())
    }
    threshold = document.get("threshold")
    positive_rate = None
    positive_rate_sample = 0
    if threshold is not None and score_doc and score_doc.get("sample"):
        sample = np.asarray(score_doc["sample"], dtype=float)
        positive_rate = float(np.mean(sample >= float(threshold)))
        positive_rate_sample = len(sample)
    canonical = json.dumps(
        {"names": list(numeric), "reference": distributions, "threshold": threshold},
        sort_keys=True,
        separators=(",", ":"),
    )
    return Reference(
        model_name=_optional_str(document.get("model_name")),
        model_version=_optional_str(document.get("model_version")),
        threshold=None if threshold is None else float(threshold),
        input_names=tuple(str(n) for n in names),
        feature_names=tuple(numeric),
        numeric=numeric,
        score=score,
        categorical=categorical,
        positive_rate=positive_rate,
        positive_rate_sample=positive_rate_sample,
        fingerprint=hashlib.sha256(canonical.encode()).hexdigest()[:16],
    )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _numeric(name: str, doc: Any) -> NumericReference:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"reference of {name!r} must be an object")
    try:
        edges = np.asarray(doc.get("edges", []), dtype=float)
        counts = np.asarray(doc["counts"], dtype=float)
        sample = np.sort(np.asarray(doc.get("sample", []), dtype=float))
        mean = float(doc["mean"])
        std = float(doc["std"])
        warmup_ms = int(doc.get("warmup_ms", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"reference of {name!r}: missing or bad field ({exc})") from exc
    if len(counts) != len(edges) + 1:
        raise ConfigError(f"reference of {name!r}: {len(edges)} edges need {len(edges) + 1} counts")
    if len(edges) and np.any(np.diff(edges) <= 0):
        raise ConfigError(f"reference of {name!r}: edges must be strictly ascending")
    if counts.sum() <= 0 or np.any(counts < 0):
        raise ConfigError(f"reference of {name!r}: counts must be >= 0 with a positive total")
    sample = sample[np.isfinite(sample)]
    if len(sample):
        quantiles = np.quantile(sample, np.linspace(0, 1, KS_GRID_POINTS + 2)[1:-1])
        grid = np.unique(quantiles)
        ref_cdf = np.searchsorted(sample, grid, side="right") / len(sample)
    else:
        grid = np.empty(0)
        ref_cdf = np.empty(0)
    return NumericReference(
        name=name,
        edges=edges,
        expected=_floored(counts / counts.sum()),
        ks_grid=grid,
        ks_reference_cdf=ref_cdf,
        pit_scores=_pit_scores(ref_cdf),
        sample_size=len(sample),
        mean=mean,
        std=std if math.isfinite(std) else 0.0,
        warmup_ms=max(warmup_ms, 0),
        distinct_values=len(np.unique(sample)),
    )


def _pit_scores(reference_cdf: FloatArray) -> FloatArray:
    if len(reference_cdf) == 0:
        return np.empty(0)
    bounds = np.concatenate([[0.0], reference_cdf, [1.0]])
    mass = np.diff(bounds)
    middle = (bounds[:-1] + bounds[1:]) / 2
    mean = float(np.dot(mass, middle))  # 0.5 by construction
    std = math.sqrt(max(float(np.dot(mass, (middle - mean) ** 2)), 1e-12))
    scores: FloatArray = (middle - mean) / std
    return scores


def _categorical(name: str, freqs: Any, rows: int = 0) -> CategoricalReference:
    if not isinstance(freqs, Mapping) or not freqs:
        raise ConfigError(f"categories of {name!r} must be a non-empty object value -> frequency")
    values = sorted(str(v) for v in freqs if v != OTHER_CATEGORY)
    categories = (OTHER_CATEGORY, *values)
    try:
        weights = np.asarray([float(freqs.get(c, 0.0)) for c in categories], dtype=float)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"categories of {name!r}: frequencies must be numbers") from exc
    if weights.sum() <= 0 or np.any(weights < 0):
        raise ConfigError(f"categories of {name!r}: frequencies must be >= 0, total > 0")
    return CategoricalReference(
        name=name,
        categories=categories,
        expected=_floored(weights / weights.sum()),
        index={c: i for i, c in enumerate(categories)},
        sample_size=rows,
    )


def _floored(proportions: FloatArray) -> FloatArray:
    floored: FloatArray = np.maximum(proportions, MIN_PROPORTION)
    normalised: FloatArray = floored / floored.sum()
    return normalised


def synthetic_reference(
    columns: Mapping[str, Sequence[float]],
    *,
    score: Sequence[float] | None = None,
    categories: Mapping[str, Mapping[str, float]] | None = None,
    threshold: float | None = 0.5,
    bins: int = 10,
    sample_size: int = 2000,
    seed: int = 0,
    model_name: str = "synthetic",
    model_version: str = "1",
) -> dict[str, Any]:
    """A reference document (metadata layout) computed from raw training columns.

    For tests, benchmarks and operators without a model directory at hand. The binning
    matches the scorer's: ``bins - 1`` inner cut points at linear quantiles.
    """
    rng = np.random.default_rng(seed)

    def describe(values: Sequence[float]) -> dict[str, Any]:
        data = np.asarray(values, dtype=float)
        data = data[np.isfinite(data)]
        cuts = np.unique(np.quantile(data, np.arange(1, bins) / bins))
        cuts = cuts[cuts > data.min()]
        counts = np.bincount(np.searchsorted(cuts, data, side="right"), minlength=len(cuts) + 1)
        take = rng.choice(len(data), size=min(sample_size, len(data)), replace=False)
        return {
            "edges": cuts.tolist(),
            "counts": counts.tolist(),
            "sample": np.sort(data[take]).tolist(),
            "mean": float(data.mean()),
            "std": float(data.std()),
        }

    rows = len(next(iter(columns.values()))) if columns else 0
    document: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "input_names": list(columns),
        "threshold": threshold,
        "reference": {
            "features": {name: describe(values) for name, values in columns.items()},
            "categories": {k: dict(v) for k, v in (categories or {}).items()},
            "rows": rows,
        },
    }
    if score is not None:
        document["reference"]["score"] = describe(score)
    return document
