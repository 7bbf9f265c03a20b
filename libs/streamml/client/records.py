"""What the readers hand out: a typed value with where it came from, and its decoder."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from streamml.client.base import AvroValue
from streamml.codec import AvroCodec
from streamml.errors import DecodeError
from streamml.settings import KafkaSettings

ValueT = TypeVar("ValueT", bound=AvroValue)


@dataclass(frozen=True, slots=True)
class ConsumedRecord(Generic[ValueT]):
    """One record of a topic: its typed value, key, headers and position."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    value: ValueT


class ValueDeserializer(Generic[ValueT]):
    """Bytes of a topic value (either wire format) -> the typed value.

    The wire format comes from the bytes: ``C3 01`` + fingerprint (single-object, the
    default, resolved against ``schemas/`` and its history) or ``00`` + schema id (a
    registry: set ``STREAMML_KAFKA_SCHEMA_REGISTRY_URL`` or pass a codec built with one).

    >>> from streamml.client.values import Label
    >>> codec = AvroCodec()
    >>> data = codec.encode("Label", {"event_id": "e1", "entity_id": "c1", "label": 1,
    ...                               "labeled_at": 1_700_000_000_000})
    >>> ValueDeserializer(Label, codec)(data).label
    1
    """

    def __init__(self, value_type: type[ValueT], codec: AvroCodec | None = None) -> None:
        self._value_type = value_type
        self._schema = value_type.schema_name()
        self._codec = codec if codec is not None else AvroCodec()

    @classmethod
    def from_settings(
        cls, value_type: type[ValueT], kafka: KafkaSettings | None = None
    ) -> ValueDeserializer[ValueT]:
        """The deserializer for these Kafka settings (a registry if one is configured)."""
        return cls(value_type, AvroCodec.from_settings(kafka or KafkaSettings()))

    @property
    def value_type(self) -> type[ValueT]:
        """The class values are read as."""
        return self._value_type

    def __call__(self, data: bytes, topic: str | None = None) -> ValueT:
        """The typed value; DecodeError (with the raw bytes) when they are not one."""
        try:
            return self._value_type.from_avro(self._codec.decode(data, self._schema, topic=topic))
        except DecodeError:
            raise
        except (KeyError, TypeError, ValueError) as exc:  # a value the class cannot hold
            raise DecodeError(
                f"not a {self._schema}: {type(exc).__name__}: {exc}", topic=topic, raw=data
            ) from exc


def headers_of(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """Record headers (a client's list or dict) as (name, bytes) pairs; no value -> b""."""
    pairs: Iterable[tuple[str, Any]] = raw.items() if isinstance(raw, Mapping) else raw or ()
    return tuple(
        (name, value.encode() if isinstance(value, str) else bytes(value or b""))
        for name, value in pairs
    )
