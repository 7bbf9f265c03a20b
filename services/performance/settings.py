"""Settings of the performance service (env prefix ``STREAMML_PERFORMANCE_``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamml.settings import HttpSettings, KafkaSettings, RuntimeSettings

HIGHER_IS_BETTER = frozenset({"accuracy", "precision", "recall", "f1", "roc_auc", "label_coverage"})
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece"})


class PerformanceSettings(BaseSettings):
    """How labels are joined to predictions and how quality is reported and alerted."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMML_PERFORMANCE_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, description="Kafka connection (STREAMML_KAFKA_*)."
    )
    runtime: RuntimeSettings = Field(
        default_factory=RuntimeSettings, description="The exactly-once processing loop."
    )
    http: HttpSettings = Field(
        default_factory=HttpSettings, description="Metrics and health endpoints."
    )
    log_level: str = Field(default="INFO", description="Log level (DEBUG, INFO, WARNING, ...).")
    log_format: Literal["text", "json"] = Field(default="text", description="Log line format.")

    label_horizon: timedelta = Field(
        default=timedelta(days=7),
        description="How long (event time) a prediction waits for its label; after that it "
        "counts as unlabeled and a label for it is rejected as late. Seconds or ISO 8601.",
    )
    early_label_grace: timedelta = Field(
        default=timedelta(hours=1),
        description="How long (event time) a label that arrived before its prediction waits; "
        "after that it is rejected as an orphan to labels.dlq.",
    )
    late_label_memory: timedelta = Field(
        default=timedelta(days=1),
        description="How long an expired prediction is remembered (16-byte key only) so that a "
        "label arriving after the horizon is rejected as 'late' rather than 'orphan'.",
    )
    allowed_lateness: timedelta = Field(
        default=timedelta(minutes=1),
        description="Out-of-orderness tolerated per input stream: the watermark is the smallest "
        "per-stream maximum event time minus this.",
    )
    report_interval: timedelta = Field(
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
    window_duration: timedelta = Field(
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

    @model_validator(mode="after")
    def _check(self) -> PerformanceSettings:
        for name in self.slo_min:
            if name not in HIGHER_IS_BETTER:
                raise ValueError(f"slo_min: {name!r} is not one of {sorted(HIGHER_IS_BETTER)}")
        for name in self.slo_max:
            if name not in LOWER_IS_BETTER:
                raise ValueError(f"slo_max: {name!r} is not one of {sorted(LOWER_IS_BETTER)}")
        for name in self.canary_metrics:
            if name not in HIGHER_IS_BETTER | LOWER_IS_BETTER:
                raise ValueError(f"canary_metrics: unknown metric {name!r}")
        interval = self.report_interval.total_seconds()
        if interval < 0.001:
            raise ValueError("report_interval must be at least 1 ms")
        for name in ("label_horizon", "early_label_grace"):
            if getattr(self, name).total_seconds() <= 0:
                raise ValueError(f"{name} must be positive")
        if len(self.segment_fields) > 8:
            raise ValueError("segment_fields: at most 8 fields")
        return self
