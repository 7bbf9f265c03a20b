"""The fault taxonomy: what the runtime does with an error, decided in one place.

Three kinds (docs/decisions/runtime-fault-taxonomy.md):

- **record**: the record itself is wrong - bytes that are not the expected Avro, a
  validation failure, the processor (or the encoding of its outputs) raising on that
  record. The record goes to ``<topic>.dlq`` and the rest of the batch goes on.
- **transient**: something the service depends on failed - the schema registry is
  unreachable, times out or answers 5xx, a broker call fails, a state store cannot be
  read. Never a dead letter: the transaction aborts, the batch is rewound and retried with
  exponential backoff and jitter, ``/readyz`` says why it is not ready; after
  ``max_attempts`` failures in a row the service exits 1 with one line.
- **unrecoverable**: waiting cannot heal it - the registry refuses a schema as
  incompatible (409), credentials are refused, a file named by a setting is missing. The
  service exits 2 with one line naming the cause and the setting to fix.

A fenced producer (a newer instance took over) is its own case: exit 0.

>>> from streamml.errors import DecodeError, RegistryUnavailableError
>>> classify(DecodeError("bad bytes")).kind
<FaultKind.RECORD: 'record'>
>>> classify(RegistryUnavailableError("connection refused")).kind
<FaultKind.TRANSIENT: 'transient'>
>>> classify(ValueError("the processor's own bug, on this record")).kind
<FaultKind.RECORD: 'record'>
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from streamml.errors import (
    AuthenticationError,
    ConfigError,
    FencedError,
    InfrastructureError,
    ProcessingError,
    UnrecoverableError,
)


class FaultKind(Enum):
    RECORD = "record"
    TRANSIENT = "transient"
    UNRECOVERABLE = "unrecoverable"
    FENCED = "fenced"


@dataclass(frozen=True, slots=True)
class Fault:
    """How to treat an error: its kind, a short cause (metric label) and one line."""

    kind: FaultKind
    cause: str
    message: str
    setting: str | None = None

    def one_line(self) -> str:
        """The line an operator reads: the cause, and what to fix when waiting cannot help."""
        fix = f" (check {self.setting})" if self.setting else ""
        return f"{self.message}{fix}"


# librdkafka error codes that mean credentials, certificates or ACLs: retrying with the
# same settings gets the same answer.
_KAFKA_AUTH_ERRORS = frozenset(
    {
        "_AUTHENTICATION",
        "_SSL",
        "SASL_AUTHENTICATION_FAILED",
        "TOPIC_AUTHORIZATION_FAILED",
        "GROUP_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    }
)
_KAFKA_FENCED_ERRORS = frozenset({"_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"})


def classify(exc: BaseException) -> Fault:
    """The fault an exception stands for (see the module docstring)."""
    if isinstance(exc, FencedError):
        return Fault(FaultKind.FENCED, "fenced", str(exc))
    if isinstance(exc, UnrecoverableError):
        return Fault(FaultKind.UNRECOVERABLE, exc.cause, str(exc), exc.setting)
    if isinstance(exc, InfrastructureError):
        return Fault(FaultKind.TRANSIENT, exc.cause, str(exc))
    if isinstance(exc, ConfigError | ProcessingError):
        return Fault(FaultKind.UNRECOVERABLE, "config", str(exc))
    kafka = _kafka_fault(exc)
    if kafka is not None:
        return kafka
    return Fault(FaultKind.RECORD, type(exc).__name__, f"{type(exc).__name__}: {exc}")


def is_record_fault(exc: BaseException) -> bool:
    """True when ``exc`` is the record's own fault (it becomes a dead letter)."""
    return classify(exc).kind is FaultKind.RECORD


def kafka_error(exc: BaseException, where: str) -> InfrastructureError | UnrecoverableError:
    """The typed error for a failed Kafka call: fenced and auth errors raise at once."""
    fault = _kafka_fault(exc)
    if fault is None or fault.kind is FaultKind.TRANSIENT:
        from streamml.errors import BrokerUnavailableError

        return BrokerUnavailableError(f"{where}: {exc}")
    if fault.kind is FaultKind.FENCED:
        raise FencedError(fault.message) from exc
    return AuthenticationError(fault.message, setting=fault.setting)


def _kafka_fault(exc: BaseException) -> Fault | None:
    # Imported here so that the taxonomy itself stays importable without librdkafka.
    try:
        from confluent_kafka import KafkaError, KafkaException
    except ImportError:  # pragma: no cover - confluent-kafka is a dependency
        return None
    if not isinstance(exc, KafkaException) or not exc.args:
        return None
    error = exc.args[0]
    if not isinstance(error, KafkaError):
        return Fault(FaultKind.TRANSIENT, "broker", str(exc))
    name = error.name()
    if error.fatal() or name in _KAFKA_FENCED_ERRORS:
        return Fault(FaultKind.FENCED, "fenced", error.str())
    if name in _KAFKA_AUTH_ERRORS:
        return Fault(
            FaultKind.UNRECOVERABLE,
            "authentication",
            f"Kafka refused this client: {error.str()}",
            "STREAMML_KAFKA_SASL_USERNAME, STREAMML_KAFKA_SASL_PASSWORD and "
            "STREAMML_KAFKA_SSL_CA_LOCATION",
        )
    return Fault(FaultKind.TRANSIENT, "broker", error.str())
