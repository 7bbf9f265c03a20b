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
