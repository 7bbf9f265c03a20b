"""Settings of the operator tools. Env prefix ``STREAMML_OPS_``; the Kafka connection comes
from ``STREAMML_KAFKA_*`` (:class:`streamml.settings.KafkaSettings`) like every service."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OpsSettings(BaseSettings):
    """Defaults of the ``replay``, ``dlq``, ``offsets`` and ``tail`` commands."""

    model_config = SettingsConfigDict(env_prefix="STREAMML_OPS_", extra="ignore")

    redrive_max_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="A dead letter whose dlq.attempt is at least this many is parked in "
        "'<dlq>.parked' by `dlq redrive` instead of being sent back again.",
    )
    chunk_records: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Records copied per Kafka transaction by `replay` and `dlq redrive`; "
        "a crash loses at most one uncommitted chunk (which is then re-sent on resume).",
    )
    idle_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a read of a planned range may see no progress before the "
        "command stops with an error (e.g. a transaction left open upstream).",
    )
    log_topic: str = Field(
        default="operator.redrive.log",
        description="Logical name of the compacted topic where redrive and replay record "
        "what they already sent (keyed, committed with the records they describe).",
    )
