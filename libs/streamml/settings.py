"""Settings shared by every service: Kafka connection, security, topics and the runtime loop.

Every field says what it is for and has a default that works with the embedded local
broker (``make kafka-up``). Services embed these in their own settings class with their
own environment prefix; the Kafka connection is read from ``STREAMML_KAFKA_*`` by all.
"""

from __future__ import annotations

import os
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamml.errors import ConfigError
from streamml.instance import default_instance_id
from streamml.logs import librdkafka_logger

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def _default_bootstrap() -> str:
    # The pytest fixture and the Makefile export this name; honour it as the default.
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP)


class KafkaSettings(BaseSettings):
    """How to reach Kafka (and optionally a schema registry). Env prefix ``STREAMML_KAFKA_``."""

    model_config = SettingsConfigDict(env_prefix="STREAMML_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field(
        default_factory=_default_bootstrap,
        description="Comma-separated host:port list of brokers. Falls back to "
        "KAFKA_BOOTSTRAP_SERVERS, then 127.0.0.1:9092 (the local broker).",
    )
    topic_prefix: str = Field(
        default="",
        description="Prefix put before every topic name, e.g. 'prod.' -> 'prod.events'.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security.protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism when security_protocol is SASL_*."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    ssl_ca_location: str | None = Field(default=None, description="CA bundle file for TLS.")
    ssl_certificate_location: str | None = Field(
        default=None, description="Client certificate file for mutual TLS."
    )
    ssl_key_location: str | None = Field(default=None, description="Client key file for mTLS.")
    ssl_key_password: SecretStr | None = Field(default=None, description="Client key password.")
    schema_registry_url: str | None = Field(
        default=None,
        description="Confluent-compatible schema registry URL. When set, values use the "
        "Confluent wire format; when empty, Avro single-object encoding against schemas/.",
    )
    schema_registry_basic_auth: SecretStr | None = Field(
        default=None, description="'user:password' for the schema registry, if it needs one."
    )
    schema_registry_ssl_ca_location: str | None = Field(
        default=None,
        description="CA bundle (PEM) that signed an https:// registry's certificate; "
        "default: the system CA store.",
    )
    schema_registry_ssl_certificate_location: str | None = Field(
        default=None, description="Client certificate (PEM) for a registry that asks for mTLS."
    )
    schema_registry_ssl_key_location: str | None = Field(
        default=None, description="Client key (PEM) that goes with the certificate above."
    )

    @field_validator(
        "ssl_ca_location",
        "ssl_certificate_location",
        "ssl_key_location",
        "schema_registry_ssl_ca_location",
        "schema_registry_ssl_certificate_location",
        "schema_registry_ssl_key_location",
    )
    @classmethod
    def _check_file(cls, value: str | None) -> str | None:
        # Checked here, so a mistyped path is one line at start-up instead of a TLS error
        # from every client later.
        if value and not os.path.isfile(value):
            raise ValueError(f"no such file {value}; give the path of a PEM file")
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"'{server}' is not host:port (example: 127.0.0.1:9092)")
        return value

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings common to producers, consumers and the admin client."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        if self.ssl_certificate_location:
            config["ssl.certificate.location"] = self.ssl_certificate_location
        if self.ssl_key_location:
            config["ssl.key.location"] = self.ssl_key_location
        if self.ssl_key_password:
            config["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        # librdkafka's own lines go through the project's structured logging, rate-limited.
        config["logger"] = librdkafka_logger()
        return config

    def registry_client_config(self) -> dict[str, Any]:
        """Settings of confluent-kafka's SchemaRegistryClient: auth and TLS, no URL."""
        config: dict[str, Any] = {}
        if self.schema_registry_basic_auth is not None:
            config["basic.auth.user.info"] = self.schema_registry_basic_auth.get_secret_value()
        if self.schema_registry_ssl_ca_location:
            config["ssl.ca.location"] = self.schema_registry_ssl_ca_location
        if self.schema_registry_ssl_certificate_location:
            config["ssl.certificate.location"] = self.schema_registry_ssl_certificate_location
        if self.schema_registry_ssl_key_location:
            config["ssl.key.location"] = self.schema_registry_ssl_key_location
        return config

    def aiokafka_config(self) -> dict[str, Any]:
        """The same connection settings in aiokafka's keyword names."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl_plain_username"] = self.sasl_username
        if self.sasl_password:
            config["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            config["ssl_context"] = create_ssl_context(
                cafile=self.ssl_ca_location,
                certfile=self.ssl_certificate_location,
                keyfile=self.ssl_key_location,
                password=(
                    self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
                ),
            )
        return config

    def topic(self, name: str) -> str:
        """The physical name of a logical topic: the prefix plus the name."""
        return f"{self.topic_prefix}{name}"


class RuntimeSettings(BaseModel):
    """The exactly-once processing loop. Nested in each service's settings (``..._RUNTIME__*``)."""

    group_id: str | None = Field(
        default=None, description="Consumer group id; defaults to '<prefix><service>'."
    )
    instance_id: str = Field(
        default_factory=default_instance_id,
        description="Stable id of this instance; the transactional.id is "
        "'<group>-<instance_id>', so a restarted instance fences its zombie. Default: "
        "'<host name>-<slot>', the slot being the lowest one free on this host (a lock "
        "file held for the life of the process, see streamml.instance), so two instances "
        "on one host differ and a restarted one gets its old id back. In Kubernetes set "
        "it to something stable per replica (a StatefulSet pod name) to avoid waiting for "
        "a killed pod's transaction to time out (docs/operations.md).",
    )
    batch_max_records: int = Field(
        default=500, ge=1, le=100_000, description="Most records in one micro-batch/transaction."
    )
    batch_max_ms: int = Field(
        default=100,
        ge=1,
        le=60_000,
        description="Longest wait for the first record of a micro-batch; the batch then "
        "takes what is already fetched and closes (streamml.batching).",
    )
    transaction_timeout_ms: int = Field(
        default=60_000, ge=1_000, description="transaction.timeout.ms of the producer."
    )
    max_attempts: int = Field(
        default=8,
        ge=1,
        description="Failed attempts in a row (aborted transactions, broker errors) before "
        "the service reports unhealthy and exits non-zero.",
    )
    backoff_initial_s: float = Field(
        default=0.2, gt=0, description="First retry delay; doubles per attempt, with jitter."
    )
    backoff_max_s: float = Field(default=10.0, gt=0, description="Longest retry delay.")
    session_timeout_ms: int = Field(
        default=45_000,
        ge=1_000,
        description="Consumer group session.timeout.ms. Longer than a broker restart (20-31 s "
        "in the soak), so one does not cost every partition its state (a restore); "
        "docs/decisions/runtime-session-timeout.md.",
    )
    max_poll_interval_ms: int = Field(
        default=300_000, ge=10_000, description="Consumer max.poll.interval.ms."
    )
    producer_queue_max_messages: int = Field(
        default=100_000, ge=1_000, description="Local producer queue bound (backpressure)."
    )
    fetch_queue_backoff_ms: int = Field(
        default=20,
        ge=0,
        le=300_000,
        description="Consumer fetch.queue.backoff.ms: how long librdkafka waits to fetch a "
        "partition again once its prefetch queue is full. librdkafka's default of 1,000 ms "
        "stalls a service reading a large backlog (64 MB of 2.3 KB FeatureVectors is drained "
        "in ~0.6 s, then nothing is fetched for 1 s); see docs/decisions/"
        "runtime-fetch-queue-backoff.md.",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a new group starts reading."
    )
    changelog_replication_factor: int = Field(
        default=1, ge=1, le=10, description="Replicas of the state changelog topics it creates."
    )
    lag_interval_s: float = Field(
        default=5.0, gt=0, description="How often consumer lag per partition is measured."
    )
    heap_trim_growth: float = Field(
        default=0.2,
        ge=0,
        description="Give the C heap's freed pages back to the OS (malloc_trim) when the RSS "
        "has grown by this share since the last trim: glibc keeps the pages a catch-up or a "
        "store's pruning peak freed, so the RSS steps up and never comes down. 0 turns it "
        "off. See docs/decisions/heap-trim.md.",
    )
    mmap_threshold_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        le=32 * 2**20,
        description="Allocations of this size or more always get a mapping of their own "
        "(glibc's M_MMAP_THRESHOLD, fixed), so a large table freed at a dictionary's resize "
        "goes back to the OS at once instead of staying in the heap. 0 keeps glibc's "
        "sliding threshold; MALLOC_MMAP_THRESHOLD_ in the environment wins. See "
        "docs/decisions/heap-trim.md.",
    )
    heap_trim_min_interval_s: float = Field(
        default=300.0,
        ge=0,
        description="Least time between two such trims (one costs up to "
        "~0.5 s of processing on a loaded machine).",
    )
    liveness_idle_s: float = Field(
        default=120.0,
        gt=0,
        description="/healthz turns 503 when the loop has made no progress for this long. "
        "Progress is a loop tick, a retry attempt, or records read while restoring state, "
        "so a long restore is alive (readiness stays 503 until it completes).",
    )
    dead_letter_circuit: bool = Field(
        default=True,
        description="Halt the service (partitions paused, not ready) when the dead-lettered "
        "share of recent records passes dead_letter_threshold: a processor bug or a bad "
        "deployment stops the service instead of turning the stream into dead letters.",
    )
    dead_letter_window: int = Field(
        default=1000, ge=10, le=1_000_000, description="Records in the circuit's sliding window."
    )
    dead_letter_threshold: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Dead-lettered share of the window above which the circuit trips "
        "(the demo's ~0.2 % malformed input is far below; 'every record fails' is 1.0).",
    )
    dead_letter_min_records: int = Field(
        default=100,
        ge=1,
        description="Records seen before the circuit may trip (a batch is judged as a whole, "
        "before its transaction commits, so a first batch this large that fails entirely "
        "leaves no dead letter behind).",
    )

    @model_validator(mode="after")
    def _check_circuit(self) -> RuntimeSettings:
        if self.dead_letter_min_records > self.dead_letter_window:
            raise ValueError(
                f"dead_letter_min_records ({self.dead_letter_min_records}) must not exceed "
                f"dead_letter_window ({self.dead_letter_window})"
            )
        return self


class HttpSettings(BaseModel):
    """The metrics/health HTTP server."""

    host: str = Field(default="127.0.0.1", description="Address the metrics server binds to.")
    port: int = Field(
        default=0, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz; 0 = any free."
    )


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ServiceSettings(BaseSettings):
    """The fields every service has: Kafka, the loop, the HTTP port and the logs.

    A service's settings class derives from this one and names its own environment prefix
    (``STREAMML_<SERVICE>_``); nested fields use ``__`` (``..._RUNTIME__BATCH_MAX_RECORDS``).
    The Kafka connection is read from ``STREAMML_KAFKA_*`` by every service.
    """

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, description="Kafka connection (STREAMML_KAFKA_*)."
    )
    runtime: RuntimeSettings = Field(
        default_factory=RuntimeSettings, description="The exactly-once processing loop."
    )
    http: HttpSettings = Field(
        default_factory=HttpSettings, description="Metrics and health endpoints."
    )
    log_level: str = Field(
        default="INFO", description="Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )
    log_format: Literal["kv", "json"] = Field(default="kv", description="Log line format.")

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        # Checked here: logging.setLevel would raise a traceback at start-up instead.
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"not a log level; use one of {', '.join(LOG_LEVELS)}")
        return value.upper()


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build a settings object, turning a validation error into a one-line ConfigError."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, cls)) from exc


def describe_validation_error(exc: ValidationError, cls: type[BaseSettings]) -> str:
    """One line naming the environment variable, the value and what is wrong."""
    # An error raised while building a nested settings class (KafkaSettings inside a
    # service's settings) is that class's error, named with that class's prefix.
    if exc.title != cls.__name__:
        cls = next((c for c in _settings_classes() if c.__name__ == exc.title), cls)
    prefix = str(cls.model_config.get("env_prefix", ""))
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "__")
    parts = []
    for error in exc.errors():
        location = delimiter.join(str(part) for part in error["loc"]).upper()
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        parts.append(f"{prefix}{location}: {error['msg']}{shown}")
    return "invalid setting " + "; ".join(parts)


def _settings_classes() -> list[type[BaseSettings]]:
    found: list[type[BaseSettings]] = []
    todo: list[type[BaseSettings]] = [BaseSettings]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found
