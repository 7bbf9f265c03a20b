"""Decoding record values for humans: the writer schema tells which schema to decode with.

Used by ``tail`` and ``dlq show``. A value that cannot be decoded is shown as hex with the
reason instead of stopping the command: dead letters are often exactly those values.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from streamml.errors import StreamMLError
from streamml.ops.common import header_text
from streamml.settings import KafkaSettings

HEX_PREVIEW_BYTES = 256


class ValueDecoder(Protocol):
    """What the operator tools need from ``streamml.codec.AvroCodec``."""

    def writer_schema_name(self, data: bytes) -> str | None: ...

    def decode(self, data: bytes, schema_name: str, *, topic: str | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded value, or why it could not be decoded."""

    schema: str | None
    value: Any
    error: str | None = None


def load_codec(kafka: KafkaSettings) -> ValueDecoder:
    """The project's Avro codec for these settings (schemas/ plus the registry, if any)."""
    from streamml.codec import AvroCodec  # fastavro: only when decoding

    codec: ValueDecoder = AvroCodec.from_settings(kafka)
    return codec


def decode_value(codec: ValueDecoder | None, data: bytes | None, topic: str) -> Decoded:
    """Decode ``data`` with the schema that wrote it; on failure keep a hex preview."""
    if data is None:
        return Decoded(None, None)
    if codec is None:
        return Decoded(None, None, "no codec available")
    try:
        schema = codec.writer_schema_name(data)
        if schema is None:
            return Decoded(None, None, "written with no schema known here (not Avro, or unknown)")
        return Decoded(schema, codec.decode(data, schema, topic=topic))
    except (StreamMLError, ValueError, KeyError, TypeError, EOFError) as exc:
        return Decoded(None, None, f"{type(exc).__name__}: {exc}")


def hex_preview(data: bytes | None) -> str:
    """The first bytes of a value as hex, marked when cut."""
    if data is None:
        return ""
    shown = data[:HEX_PREVIEW_BYTES].hex()
    return shown + ("..." if len(data) > HEX_PREVIEW_BYTES else "")


def jsonable(value: Any) -> Any:
    """Decoded Avro (datetimes, bytes, decimals, UUIDs) as plain JSON types.

    >>> jsonable({"t": dt.datetime(2026, 11, 22, tzinfo=dt.UTC), "b": b"\\x00"})
    {'t': '2026-11-22T00:00:00+00:00', 'b': 'AA=='}
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    return value


def headers_for_json(headers: Sequence[tuple[str, bytes]] | None) -> list[list[str]]:
    """Headers as ``[name, text]`` pairs (repeats kept; non-UTF-8 values as 0x-hex)."""
    return [[name, header_text(value)] for name, value in headers or ()]


def key_text(key: bytes | None) -> str | None:
    """A record key for humans."""
    return None if key is None else header_text(key)
