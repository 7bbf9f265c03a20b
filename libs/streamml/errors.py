"""One exception root for the project, with a subclass per area.

Third-party errors are wrapped with ``raise ... from exc`` so callers handle one
hierarchy; errors about a Kafka record keep the raw bytes and where they came from,
ready for a dead-letter queue.
"""

from __future__ import annotations


class StreamMLError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(StreamMLError):
    """A setting or command-line argument is wrong; the message says how to fix it."""


class BrokerError(StreamMLError):
    """The local Kafka broker could not be fetched, started or reached."""


class SchemaError(StreamMLError):
    """A schema file is missing, unparsable or incompatible."""


class RecordError(StreamMLError):
    """An error about one Kafka record; carries the raw record for the dead-letter queue."""

    stage = "process"

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        raw: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.raw = raw


class DecodeError(RecordError):
    """Bytes that are not a valid encoded record (wrong magic byte, unknown schema, garbage)."""

    stage = "decode"


class EncodeError(StreamMLError):
    """A value does not match the schema it is written with."""


class ValidationError(RecordError):
    """A decoded record breaks a data-quality rule."""

    stage = "validate"


class ProcessingError(StreamMLError):
    """The processing loop cannot go on (fenced, too many failed attempts)."""


class FencedError(ProcessingError):
    """Another instance with the same transactional.id took over; this one must exit."""


class InfrastructureError(StreamMLError):
    """Something the service depends on failed, not the record: never a dead letter.

    The runtime aborts the transaction, rewinds the batch and retries it with backoff
    (see :mod:`streamml.faults`). ``cause`` is a short, low-cardinality name for metrics
    and readiness reasons.
    """

    cause = "infrastructure"


class RegistryUnavailableError(InfrastructureError, SchemaError):
    """The schema registry could not be reached, timed out or answered with a 5xx/429."""

    cause = "schema_registry_unavailable"


class BrokerUnavailableError(InfrastructureError):
    """A Kafka call of the transaction failed in a way a retry of the batch can fix."""

    cause = "broker"


class StateStoreError(InfrastructureError):
    """A state store or its changelog could not be read or written."""

    cause = "state_store"


class UnrecoverableError(ConfigError):
    """A fault that waiting cannot heal; the service exits 2 with one line naming the fix.

    ``setting`` names the environment variable (or setting) to look at.
    """

    cause = "unrecoverable"

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class RegistryRefusedError(UnrecoverableError, SchemaError):
    """The schema registry refused a request for good (409 incompatible schema, 401/403, 422)."""

    cause = "schema_registry_refused"


class AuthenticationError(UnrecoverableError):
    """Kafka refused this client's credentials or authorisation."""

    cause = "authentication"
