"""Settings of the features service (env prefix ``STREAMML_FEATURES_``, nested with ``__``).

Example: ``STREAMML_FEATURES_ALLOWED_LATENESS_MS=2000``,
``STREAMML_FEATURES_CIRCUIT__THRESHOLD=0.3``, ``STREAMML_FEATURES_CIRCUIT__PROBE_AFTER_S=300``,
``STREAMML_FEATURES_RUNTIME__BATCH_MAX_RECORDS=1000``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.features.feature_set import DEFAULT_LATENESS_MS
from streamml.settings import ServiceSettings


class CircuitSettings(BaseModel):
    """The data-quality fail-stop circuit (``STREAMML_FEATURES_CIRCUIT__*``)."""

    enabled: bool = Field(default=True, description="Halt on a burst of invalid records.")
    window: int = Field(
        default=1000, ge=1, le=1_000_000, description="Sliding window: the last N records."
    )
    threshold: float = Field(
        default=0.5,
        ge=0.0,
        lt=1.0,
        description="Open when the invalid share in the window is above this.",
    )
    min_records: int = Field(
        default=100,
        ge=1,
        description="Records seen (since start or resume) before the circuit may open, so "
        "a single bad record at start-up does not halt the service.",
    )
    probe_after_s: float | None = Field(
        default=None,
        gt=0,
        description="Cool-down after which the service probes by itself (half-open); "
        "unset = only an operator's POST /resume (streamml features resume) lifts the halt.",
    )
    probe_records: int | None = Field(
        default=None,
        ge=1,
        description="Records a probe judges before closing; default min_records.",
    )

    @model_validator(mode="after")
    def _fits_window(self) -> CircuitSettings:
        if self.min_records > self.window:
            raise ValueError(f"min_records {self.min_records} is larger than window {self.window}")
        if self.probe_records is not None and self.probe_records > self.window:
            raise ValueError(
                f"probe_records {self.probe_records} is larger than window {self.window}"
            )
        return self


class FeaturesSettings(ServiceSettings):
    """What the features service reads and writes, and how strict it is."""

    model_config = SettingsConfigDict(env_prefix="STREAMML_FEATURES_")

    input_topic: str = Field(default="events", description="Event input topic (logical).")
    output_topic: str = Field(
        default="features", description="FeatureVector output topic (logical)."
    )
    dedup_field: str = Field(
        default="event_id",
        min_length=1,
        description="Dotted path of the field that identifies an event for deduplication.",
    )
    dedup_retention_s: int = Field(
        default=7 * 86_400,
        ge=60,
        le=366 * 86_400,
        description="How long (in event time) an event id is remembered. Events older than "
        "this behind the partition's latest event are dead-lettered (validation.event_time), "
        "because they could be duplicates whose id was already forgotten.",
    )
    max_future_s: int = Field(
        default=86_400,
        ge=1,
        description="How far ahead of the partition's latest event time an event may be.",
    )
    allowed_lateness_ms: int = Field(
        default=DEFAULT_LATENESS_MS,
        ge=0,
        lt=600_000,
        description="Bounded out-of-orderness per entity: an event older than the entity's "
        "latest event time minus this goes to the DLQ as 'late'. Part of the feature set "
        "definition (windows leave out the last lateness ms), so it changes the hash.",
    )
    max_entity_events: int = Field(
        default=10_000,
        ge=10,
        description="Most events kept per entity for the windows; beyond, the oldest are "
        "folded into the running totals early (counted in a metric).",
    )
    include_names: bool = Field(
        default=True, description="Write the feature names into every FeatureVector."
    )
    gc_young_threshold: int = Field(
        default=20_000,
        ge=0,
        description="Allocations between two young-generation collections of Python's "
        "cycle collector (CPython's default is 700, which costs this service ~2 us per "
        "event, see docs/decisions/features-performance.md); 0 keeps the default.",
    )
    circuit: CircuitSettings = Field(
        default_factory=CircuitSettings, description="Fail-stop circuit."
    )
