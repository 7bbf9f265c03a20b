"""Decoding for humans: every schema in schemas/ round-trips through the tail line."""

from __future__ import annotations

import json

import pytest

from streamml.codec import AvroCodec
from streamml.ops.decoding import decode_value, jsonable
from streamml.ops.tail import record_line

CODEC = AvroCodec()


def _sample(schema: dict[str, object] | list[object] | str, names: dict[str, object]) -> object:
    """A minimal valid value for an Avro schema (first union branch, defaults ignored)."""
    if isinstance(schema, str):
        primitives = {
            "null": None,
            "boolean": True,
            "int": 1,
            "long": 2,
            "float": 1.5,
            "double": 2.5,
            "string": "s",
            "bytes": b"\x00\x01",
        }
        if schema in primitives:
            return primitives[schema]
        return _sample(names[schema.split(".")[-1]], names)  # type: ignore[arg-type]
    if isinstance(schema, list):
        return _sample(schema[0], names)  # type: ignore[arg-type]
    kind = schema["type"]
    if kind == "record":
        names[str(schema["name"])] = schema
        return {f["name"]: _sample(f["type"], names) for f in schema["fields"]}  # type: ignore[index, union-attr]
    if kind == "enum":
        names[str(schema["name"])] = schema
        return schema["symbols"][0]  # type: ignore[index]
    if kind == "array":
        return [_sample(schema["items"], names)]  # type: ignore[arg-type]
    if kind == "map":
        return {"k": _sample(schema["values"], names)}  # type: ignore[arg-type]
    if kind == "fixed":
        return b"\x00" * int(schema["size"])  # type: ignore[call-overload]
    return _sample(kind, names)  # type: ignore[arg-type]


@pytest.mark.parametrize("schema", CODEC.schema_names())
def test_tail_line_decodes_every_schema(schema: str) -> None:
    value = _sample(CODEC.definition(schema), {})
    data = CODEC.encode(schema, value)  # type: ignore[arg-type]
    line = json.loads(
        record_line(
            CODEC,
            topic="p.x",
            partition=3,
            offset=9,
            timestamp_ms=5,
            key=b"k-1",
            value=data,
            headers=[("replay.id", b"r"), ("bin", b"\xff")],
        )
    )
    assert line["schema"] == schema
    assert (line["partition"], line["offset"], line["key"]) == (3, 9, "k-1")
    assert line["headers"] == [["replay.id", "r"], ["bin", "0xff"]]
    assert line["value"] == jsonable(CODEC.decode(data, schema))
    assert "error" not in line


def test_undecodable_value_is_shown_as_hex_with_the_reason() -> None:
    line = json.loads(
        record_line(
            CODEC,
            topic="t",
            partition=0,
            offset=0,
            timestamp_ms=0,
            key=None,
            value=b"garbage",
            headers=None,
        )
    )
    assert line["value"] is None
    assert line["value_hex"] == b"garbage".hex()
    assert "schema" in line["error"]


def test_decode_without_codec_or_value() -> None:
    assert decode_value(None, b"x", "t").error == "no codec available"
    assert decode_value(CODEC, None, "t").value is None
    truncated = CODEC.encode("Label", _sample(CODEC.definition("Label"), {}))[:12]  # type: ignore[arg-type]
    assert decode_value(CODEC, truncated, "t").error is not None
