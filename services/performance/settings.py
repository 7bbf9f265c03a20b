"""Settings of the performance service (env prefix ``STREAMML_PERFORMANCE_``)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import SettingsConfigDict

from streamml.settings import ServiceSettings

HIGHER_IS_BETTER = frozenset({"accuracy", "precision", "recall", "f1", "roc_auc", "label_coverage"})
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece"})
ESTIMATED = frozenset(
    {"estimated_roc_auc", "estimated_precision", "estimated_recall", "estimated_positive_rate"}
)

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def _duration(value: Any) -> Any:
    """Seconds ('7200'), a number with a unit ('7d', '2h', '10m', '30s', '250ms'), or
    anything pydantic reads as a timedelta (ISO 8601 'P7D')."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class PerformanceSettings(ServiceSettings):
    """How labels are joined to predictions and how quality is reported and alerted."""

    model_config = SettingsConfigDict(env_prefix="STREAMML_PERFORMANCE_")

    predictions_topic: str = Field(
        default="predictions", description="Served predictions (logical name, before the prefix)."
    )
    shadow_topic: str | None = Field(
        default="predictions.shadow",
        description="Shadow predictions; empty to not read them.",
    )
    shadow_required: bool = Field(
        default=False,
        description="Whether the shadow topic holds the watermark back from the start. False: "
        "only once a partition of it has delivered a record, so no shadow model is needed, "
        "but shadow records read before that may land one report interval later than in a "
        "re-run. True (when a shadow model always runs): replays are exact for shadow too.",
    )
    labels_topic: str = Field(default="labels", description="Ground-truth labels.")
    report_topic: str = Field(default="performance", description="PerformanceReport output.")
    alerts_topic: str = Field(default="performance.alerts", description="SloAlert output.")
    partials_topic: str = Field(
        default="performance.partials",
        description="Internal 1-partition topic: each input partition's contribution to a "
        "report boundary, merged by the instance that owns its partition 0.",
    )
    source_partitions: int = Field(
        default=0,
        ge=0,
        description="Partitions of the predictions topic; 0 = read from the broker at start. "
        "A boundary is reported once every partition has sent its contribution.",
    )

    label_horizon: Duration = Field(
        default=timedelta(days=7),
        description="How long (event time) a prediction waits for its label; after that it "
        "counts as unlabeled and a label for it is rejected as late. Seconds or ISO 8601.",
    )
    early_label_grace: Duration = Field(
        default=timedelta(hours=1),
        description="How long (event time) a label that arrived before its prediction waits; "
        "after that it is rejected as an orphan to labels.dlq.",
    )
    late_label_memory: Duration = Field(
        default=timedelta(days=1),
        description="How long an expired prediction is remembered (16-byte key only) so that a "
        "label arriving after the horizon is rejected as 'late' rather than 'orphan'.",
    )
    allowed_lateness: Duration = Field(
        default=timedelta(minutes=1),
        description="Out-of-orderness tolerated per input stream: the watermark is the smallest "
        "per-stream maximum event time minus this.",
    )
    report_interval: Duration = Field(
        default=timedelta(minutes=5),
        description="Event-time interval between PerformanceReport emissions; reports are "
        "emitted at multiples of it, when the watermark passes them.",
    )
    window_kind: Literal["count", "time"] = Field(
        default="count",
        description="Sliding window: the last `window_size` labeled predictions ('count') or "
        "the last `window_duration` of event time ('time').",
    )
    window_size: int = Field(
        default=10_000, ge=10, le=1_000_000, description="Labeled predictions in a count window."
    )
    window_duration: Duration = Field(
        default=timedelta(hours=1), description="Event-time length of a time window."
    )
    segment_fields: list[str] = Field(
        default_factory=lambda: ["country", "channel"],
        description="Prediction.segments keys reported separately (empty list: none).",
    )
    segment_max_values: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Distinct values kept per segment field and partition (first seen); the "
        "rest are reported as 'other', so metric label cardinality stays bounded.",
    )
    slo_min: dict[str, float] = Field(
        default_factory=lambda: {"roc_auc": 0.7},
        description="Metrics that must stay at or above a threshold (accuracy, precision, "
        "recall, f1, roc_auc, label_coverage), e.g. '{\"roc_auc\": 0.7}'.",
    )
    slo_max: dict[str, float] = Field(
        default_factory=dict,
        description="Metrics that must stay at or below a threshold (log_loss, brier, ece).",
    )
    slo_consecutive_windows: int = Field(
        default=3, ge=1, le=1000, description="Reports in a row in breach before an alert opens."
    )
    slo_min_labeled: int = Field(
        default=50, ge=1, description="Labeled predictions a window needs to be judged at all."
    )
    canary_metrics: list[str] = Field(
        default_factory=lambda: ["roc_auc"],
        description="Metrics on which a canary is compared with the primary of the same model.",
    )
    canary_margin: float = Field(
        default=0.02,
        ge=0,
        description="A canary worse than primary by more than this (absolute) is flagged.",
    )
    model_dir: Path | None = Field(
        default=None,
        description="Directory of <name>/<version>/ model versions (the scorer's model_dir), "
        "read for each model version's calibration map, so reports carry estimates before "
        "labels arrive (docs/estimated-performance.md). Empty: every model is reported "
        "'not_calibrated'.",
    )
    public_key_path: Path = Field(
        default=Path("keys/signing.pub"),
        description="Ed25519 public key (PEM) a model version must be signed for before its "
        "calibration is used (the scorer's public_key_path); read only with model_dir.",
    )
    estimate_min_predictions: int = Field(
        default=1000,
        ge=1,
        description="Predictions a window needs before it carries estimates (fewer: "
        "estimate_status 'too_few').",
    )
    estimate_slo_min: dict[str, float] = Field(
        default_factory=lambda: {"estimated_roc_auc": 0.7},
        description="Estimated metrics that must stay at or above a threshold (alert kind "
        "'estimate'; judged only on calibrated windows), e.g. '{\"estimated_roc_auc\": 0.7}'; "
        "'{}' for none.",
    )
    gc_young_threshold: int = Field(
        default=20_000,
        ge=0,
        description="Allocations between two young-generation collections of Python's cycle "
        "collector (CPython's default, 700, costs this service ~0.8 us per input record, see "
        "docs/decisions/performance-throughput.md); 0 keeps the default.",
    )

    @field_validator("slo_min")
    @classmethod
    def _check_slo_min(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name not in HIGHER_IS_BETTER:
                raise ValueError(f"{name!r} is not one of {sorted(HIGHER_IS_BETTER)}")
        return value

    @field_validator("estimate_slo_min")
    @classmethod
    def _check_estimate_slo_min(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name not in ESTIMATED:
                raise ValueError(f"{name!r} is not one of {sorted(ESTIMATED)}")
        return value

    @field_validator("slo_max")
    @classmethod
    def _check_slo_max(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name not in LOWER_IS_BETTER:
                raise ValueError(f"{name!r} is not one of {sorted(LOWER_IS_BETTER)}")
        return value

    @field_validator("canary_metrics")
    @classmethod
    def _check_canary(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in HIGHER_IS_BETTER | LOWER_IS_BETTER:
                raise ValueError(f"unknown metric {name!r}")
        return value

    @field_validator("segment_fields")
    @classmethod
    def _check_segments(cls, value: list[str]) -> list[str]:
        if len(value) > 8 or len(set(value)) != len(value):
            raise ValueError("at most 8 distinct segment fields")
        return value

    @field_validator("label_horizon", "early_label_grace", "report_interval", "window_duration")
    @classmethod
    def _check_positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 0.001:
            raise ValueError("must be at least 1 ms")
        return value

    @field_validator("late_label_memory", "allowed_lateness")
    @classmethod
    def _check_not_negative(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 0:
            raise ValueError("must not be negative")
        return value
