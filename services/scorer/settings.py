"""Settings of the scorer (env prefix ``STREAMML_SCORER_``, nested with ``__``).

Example: ``STREAMML_SCORER_MODEL_DIR=/models``,
``STREAMML_SCORER_PUBLIC_KEY_PATH=/keys/signing.pub``,
``STREAMML_SCORER_LATENCY_BUDGET_MS=25``, ``STREAMML_SCORER_RULES='["amount>2000:0.9"]'``,
``STREAMML_SCORER_RUNTIME__BATCH_MAX_RECORDS=1000``.

The ``*_model``/``*_version`` settings are the starting point only: instructions on the
``model.control`` topic (``streamml scorer promote``) take precedence over them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.scorer.processor import ScoringPolicy
from streamml.settings import ServiceSettings


class ScorerSettings(ServiceSettings):
    """Where the models are, who signs them, how each route is budgeted and guarded."""

    model_config = SettingsConfigDict(env_prefix="STREAMML_SCORER_", protected_namespaces=())

    features_topic: str = Field(default="features", description="FeatureVector input (logical).")
    predictions_topic: str = Field(
        default="predictions", description="Served predictions (logical)."
    )
    shadow_topic: str = Field(
        default="predictions.shadow", description="Shadow predictions, never served (logical)."
    )
    control_topic: str = Field(
        default="model.control",
        description="Compacted ModelControl topic every instance follows (logical).",
    )
    follow_control: bool = Field(
        default=True,
        description="Follow model.control (hot reload, rollback). Off: serve the configured "
        "models only.",
    )
    control_catch_up_timeout_s: float = Field(
        default=30.0, gt=0, description="How long start-up waits to read model.control."
    )

    model_dir: Path = Field(
        default=Path("models"), description="Directory of <name>/<version>/ model versions."
    )
    public_key_path: Path = Field(
        default=Path("keys/signing.pub"),
        description="Ed25519 public key (PEM) every model version must be signed for.",
    )
    primary_model: str = Field(default="fraud-gbt", description="Primary model name.")
    primary_version: str | None = Field(
        default=None, description="Primary version; empty = the highest in model_dir."
    )
    fallback_model: str | None = Field(
        default="fraud-logreg", description="Fallback model name; empty = none."
    )
    fallback_version: str | None = Field(
        default=None, description="Fallback version; empty = the highest."
    )
    shadow_model: str | None = Field(default=None, description="Shadow model name, if any.")
    shadow_version: str | None = Field(default=None, description="Shadow version.")
    canary_model: str | None = Field(default=None, description="Canary model name, if any.")
    canary_version: str | None = Field(default=None, description="Canary version.")
    canary_share: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of entities the canary serves."
    )
    expected_feature_set_hash: str | None = Field(
        default=None,
        description="Refuse model versions trained on another feature set. Empty: the hash "
        "of the vectors seen so far decides (any hash before the first vector).",
    )

    check_names: bool = Field(
        default=False,
        description="Decode every vector's names and dead-letter vectors whose names differ "
        "from their model's input order (~20 us more per vector). Off: vectors are read "
        "without names (codec projection FeatureVector[-names]); the feature_set_hash fixes "
        "the order, and the rules route decodes names only for a feature set no model knows.",
    )

    intra_op_threads: int = Field(
        default=1, ge=1, le=64, description="onnxruntime intra-op threads per session."
    )
    gc_young_threshold: int = Field(
        default=20_000,
        ge=0,
        description="Allocations between two young-generation collections of Python's "
        "cycle collector (CPython's default is 700: with ~10 objects per vector it ran "
        "every few dozen vectors, see docs/decisions/scorer-throughput.md); 0 keeps the "
        "default.",
    )
    warmup_rows: int = Field(
        default=64, ge=1, description="Rows of the warm-up batch run before a model serves."
    )
    latency_budget_ms: float = Field(
        default=50.0,
        gt=0,
        description="A primary or canary batch slower than this is discarded and rescored "
        "by the next route (reason latency_budget).",
    )
    breaker_failure_threshold: int = Field(
        default=3, ge=1, description="Consecutive failed primary batches that open the breaker."
    )
    breaker_cooldown_s: float = Field(
        default=30.0, ge=0, description="Open breaker: seconds before a half-open probe."
    )
    canary_max_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="Canary error share that triggers a rollback."
    )
    canary_max_latency_ms: float = Field(
        default=100.0, gt=0, description="A canary batch slower than this counts as slow."
    )
    canary_max_slow_rate: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Share of canary records in slow batches that triggers a rollback.",
    )
    canary_min_records: int = Field(
        default=200, ge=1, description="Canary records seen before its bounds are judged."
    )
    canary_window_records: int = Field(
        default=2000, ge=1, description="The canary bounds look at this many recent records."
    )
    rules: list[str] = Field(
        default_factory=list,
        description="Last-resort rules '<feature><op><value>:<score>' (JSON list), e.g. "
        '["amount>2000:0.9"]; highest matching score wins.',
    )
    rules_default_score: float = Field(
        default=0.0, ge=0, le=1, description="Score when no rule matches (rules route)."
    )
    rules_threshold: float = Field(
        default=0.5, ge=0, le=1, description="Decision threshold of the rules route."
    )

    def policy(self) -> ScoringPolicy:
        return ScoringPolicy(
            latency_budget_ms=self.latency_budget_ms,
            breaker_failure_threshold=self.breaker_failure_threshold,
            breaker_cooldown_s=self.breaker_cooldown_s,
            canary_max_error_rate=self.canary_max_error_rate,
            canary_max_latency_ms=self.canary_max_latency_ms,
            canary_max_slow_rate=self.canary_max_slow_rate,
            canary_min_records=self.canary_min_records,
            canary_window_records=self.canary_window_records,
        )
