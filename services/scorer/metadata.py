"""The metadata of a model version: what it expects, how it decides, what "normal" looks like.

``metadata.json`` in a model version directory is a :class:`ModelMetadata`. Besides the
model's identity, input order and decision threshold it carries the reference
distributions the drift service compares live traffic against:

* per numeric feature and for the score, a :class:`NumericReference`: quantile cut points
  and the training counts per bin (for PSI), plus a sample of raw values (for KS);
* per categorical attribute (``FeatureVector.categories``), the value frequencies.

Binning is defined here once (:func:`bin_counts`) so training and drift agree.

>>> ref = numeric_reference([1.0, 2.0, 3.0, 4.0], bins=2, sample_size=10, seed=0)
>>> ref.edges, ref.counts
([2.5], [2, 2])
>>> bin_counts(ref.edges, [0.0, 2.5, 9.0])
[1, 2]
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.scorer.calibration import Calibration

FORMAT_VERSION = 1
OTHER_CATEGORY = "__other__"
"""Frequency bucket of the categories that did not make the top ``max_categories``."""


class NumericReference(BaseModel):
    """The training distribution of one numeric value (a feature or the score)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    edges: list[float] = Field(
        description="Inner quantile cut points, ascending and distinct. Bin i holds "
        "edges[i-1] <= x < edges[i]; the first and last bins are open-ended, so there are "
        "len(edges) + 1 bins."
    )
    counts: list[int] = Field(description="Training rows per bin (len(edges) + 1 values).")
    sample: list[float] = Field(description="A uniform random sample of training values (KS).")
    mean: float = Field(description="Training mean.")
    std: float = Field(description="Training standard deviation.")
    warmup_ms: int = Field(
        default=0,
        ge=0,
        description="Event time after a stream starts before live values of this feature "
        "are comparable with this reference (a feature of the entity's history: its window; "
        "0: comparable at once). The drift service opens no episode on it before then.",
    )

    @field_validator("counts")
    @classmethod
    def _non_negative(cls, value: list[int]) -> list[int]:
        if any(count < 0 for count in value):
            raise ValueError("bin counts must be >= 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NumericReference:
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError(
                f"{len(self.edges)} edges need {len(self.edges) + 1} counts, got {len(self.counts)}"
            )
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly ascending")
        return self


class ReferenceDistributions(BaseModel):
    """Reference distributions of every input feature, of the score and of the categories."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: dict[str, NumericReference] = Field(description="By feature name.")
    score: NumericReference = Field(description="Of the model's own score on the training set.")
    categories: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per categorical attribute, value -> frequency (sums to 1); rare values "
        f"are pooled under {OTHER_CATEGORY!r}.",
    )
    rows: int = Field(description="Training rows the distributions were computed from.")


class ModelMetadata(BaseModel):
    """Everything the scorer and the monitors need to know about one model version."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    format_version: int = Field(default=FORMAT_VERSION, description="Of this metadata layout.")
    model_name: str = Field(min_length=1, description="Model name, e.g. fraud-gbt.")
    model_version: str = Field(min_length=1, description="Version within the name, e.g. 3.")
    created_at: str = Field(description="UTC ISO-8601 time the version was built.")
    algorithm: str = Field(description="What was trained, e.g. GradientBoostingClassifier.")
    feature_set: str = Field(description="Feature set name the model was trained on.")
    feature_set_version: str = Field(description="Feature set version.")
    feature_set_hash: str = Field(
        min_length=1, description="Feature set hash; vectors with another hash are not scored."
    )
    input_names: list[str] = Field(min_length=1, description="Feature names in input order.")
    onnx_input: str = Field(default="features", description="Name of the ONNX input tensor.")
    onnx_output: str = Field(
        default="probabilities",
        description="Name of the ONNX output holding the score: [n, 2] class probabilities "
        "(column 1 is the positive class), [n, 1] or [n].",
    )
    threshold: float = Field(ge=0.0, le=1.0, description="score >= threshold -> decision true.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Training/validation metrics (auc, ...)."
    )
    training: dict[str, Any] = Field(
        default_factory=dict, description="How it was trained (events, seed, rows, params)."
    )
    reference: ReferenceDistributions | None = Field(
        default=None, description="Reference distributions for drift tests."
    )
    calibration: Calibration | None = Field(
        default=None,
        description="Score -> probability map fitted on held-out rows, with its quality "
        "figures, for the performance service's estimates before labels (None: a version "
        "trained before calibration existed; the estimator says 'not calibrated').",
    )

    @field_validator("input_names")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("input_names must be distinct")
        return value

    def to_json(self) -> bytes:
        """Canonical bytes (sorted keys, 2-space indent) as written to ``metadata.json``."""
        return (self.model_dump_json(indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ModelMetadata:
        return cls.model_validate_json(data)


def bin_counts(edges: Sequence[float], values: Iterable[float]) -> list[int]:
    """Counts of ``values`` in the bins defined by ``edges`` (see :class:`NumericReference`)."""
    counts = [0] * (len(edges) + 1)
    for value in values:
        if math.isfinite(value):
            counts[bisect.bisect_right(edges, value)] += 1
    return counts


def numeric_reference(
    values: Sequence[float], *, bins: int = 10, sample_size: int = 2000, seed: int = 0
) -> NumericReference:
    """The reference of one numeric column: quantile bins, counts, a sample, mean and std."""
    finite = sorted(float(v) for v in values if math.isfinite(v))
    if not finite:
        return NumericReference(edges=[], counts=[0], sample=[], mean=0.0, std=0.0)
    edges: list[float] = []
    for i in range(1, bins):
        # Nearest-rank-free linear quantile, as numpy's default ("linear").
        position = (len(finite) - 1) * i / bins
        low = math.floor(position)
        high = min(low + 1, len(finite) - 1)
        cut = finite[low] + (finite[high] - finite[low]) * (position - low)
        # A cut at the minimum would leave the first bin empty by construction.
        if cut > finite[0] and (not edges or cut > edges[-1]):
            edges.append(cut)
    rng = random.Random(seed)
    sample = finite if len(finite) <= sample_size else rng.sample(finite, sample_size)
    mean = sum(finite) / len(finite)
    variance = sum((v - mean) ** 2 for v in finite) / len(finite)
    return NumericReference(
        edges=edges,
        counts=bin_counts(edges, finite),
        sample=sorted(sample),
        mean=mean,
        std=math.sqrt(variance),
    )


def category_frequencies(
    rows: Iterable[Mapping[str, str]], *, max_categories: int = 50
) -> dict[str, dict[str, float]]:
    """Per attribute, value -> frequency over ``rows``; the tail pooled as ``__other__``."""
    counters: dict[str, Counter[str]] = {}
    for row in rows:
        for attribute, value in row.items():
            counters.setdefault(attribute, Counter())[value] += 1
    result: dict[str, dict[str, float]] = {}
    for attribute, counter in sorted(counters.items()):
        seen = sum(counter.values())
        top = counter.most_common(max_categories)
        freqs = {value: count / seen for value, count in top}
        rest = seen - sum(count for _, count in top)
        if rest:
            freqs[OTHER_CATEGORY] = rest / seen
        result[attribute] = freqs
    return result
