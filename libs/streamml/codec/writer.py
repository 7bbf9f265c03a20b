"""The compiled writer: Avro binary bodies written in one pass, byte-identical to fastavro."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np

from streamml.codec.spec import _COMPLEX, _INT_RANGE, _LONG_RANGE

# -- the compiled writer -----------------------------------------------------------------
#
# fastavro's writer interprets the schema for every datum (a dispatch per array element),
# and the codec validated every value before it: together ~26 us for a FeatureVector of 88
# doubles and names. The compiled writer below checks and writes in one pass, with C-level
# loops where Avro allows them (an array of doubles is one ``struct.pack``). It accepts
# exactly what ``_conformance_check`` accepts (exact types, every field present) and writes
# the bytes fastavro would write (one block per array or map, zigzag varints); anything
# else raises ``_NotFastError`` and takes the validated fastavro path, so errors and corner
# cases behave as before. The byte equality is a test (tests/unit/test_codec.py).


class _NotFastError(Exception):
    """The compiled writer does not take this value: validate and write with fastavro."""


_NOT_FAST = _NotFastError()
_FAST_ERRORS = (_NotFastError, KeyError, OverflowError, UnicodeError, struct.error)
_ONE_BYTE = [bytes((i,)) for i in range(128)]
_EMPTY_BLOCKS = b"\x00"
_NUMBER_TYPES = frozenset((float, int))
_STR_TYPE = frozenset((str,))
_MEMO_LIMIT = 4096


class _UnsupportedError(Exception):
    """The schema uses a construct the compiled writer leaves to fastavro."""


def _zigzag(v: int) -> bytes:
    """Avro ``long`` (and ``int``, and block counts): zigzag, then base-128 varint."""
    n = (v << 1) ^ (v >> 63)
    if n < 128:
        return _ONE_BYTE[n]
    if n < 16_384:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    # Large values (epoch milliseconds) share their high bits with the previous ones: the
    # low 14 bits are two bytes from a table, the varint of the rest is remembered.
    high = n >> 14
    tail = _VARINT_TAILS.get(high)
    if tail is None:
        if len(_VARINT_TAILS) >= _MEMO_LIMIT:
            _VARINT_TAILS.clear()
        tail = _VARINT_TAILS[high] = _varint(high)
    return _LOW_14_BITS[n & 0x3FFF] + tail


def encode_long(n: int) -> bytes:
    """The Avro binary of a long (also of an int, and of a block count or length)."""
    return _zigzag(n)


def encode_string(text: str) -> bytes:
    """The Avro binary of a string (UTF-8, strict: a lone surrogate raises)."""
    data = text.encode("utf-8")
    return _zigzag(len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINT_TAILS: dict[int, bytes] = {}
_LOW_14_BITS = tuple(bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80)) for n in range(16_384))


def _compile_writer(parsed: Any) -> Callable[[Any], bytes] | None:
    """A writer for ``parsed`` compiled once, or None when the schema is not supported
    (recursive types, unions other than ``[null, T]``)."""
    named: dict[str, Any] = {}
    fastavro.parse_schema(parsed, named)
    try:
        return _writer_for(parsed, named, ())
    except _UnsupportedError:
        return None


def _writer_for(
    schema: Any, named: dict[str, Any], enclosing: tuple[str, ...]
) -> Callable[[Any], bytes]:
    if isinstance(schema, list):
        return _union_writer(schema, named, enclosing)
    if isinstance(schema, dict) and schema.get("type") not in _COMPLEX:
        return _writer_for(schema["type"], named, enclosing)
    if isinstance(schema, str):
        primitive = _PRIMITIVE_WRITERS.get(schema)
        if primitive is not None:
            return primitive
        if schema in enclosing:
            raise _UnsupportedError(f"recursive type {schema}")
        return _writer_for(named[schema], named, enclosing)
    kind = schema["type"]
    if kind == "array":
        return _array_writer(schema["items"], named, enclosing)
    if kind == "map":
        return _map_writer(schema["values"], named, enclosing)
    if kind == "enum":
        return _enum_writer(schema["symbols"])
    if kind == "fixed":
        return _fixed_writer(schema["size"])
    return _record_writer(schema, named, enclosing)


def _enum_writer(symbols: list[str]) -> Callable[[Any], bytes]:
    indexes = {symbol: _zigzag(i) for i, symbol in enumerate(symbols)}

    def write_enum(v: Any) -> bytes:
        if type(v) is not str:
            raise _NOT_FAST
        return indexes[v]

    return write_enum


def _fixed_writer(size: int) -> Callable[[Any], bytes]:
    def write_fixed(v: Any) -> bytes:
        if type(v) is not bytes or len(v) != size:
            raise _NOT_FAST
        return v

    return write_fixed


def _record_writer(
    schema: dict[str, Any], named: dict[str, Any], enclosing: tuple[str, ...]
) -> Callable[[Any], bytes]:
    name = str(schema["name"])
    inner = (*enclosing, name)
    fields = tuple((str(f["name"]), _writer_for(f["type"], named, inner)) for f in schema["fields"])

    def write_record(v: Any) -> bytes:
        # A missing field (KeyError) leaves it to fastavro, which writes its default.
        if type(v) is not dict:
            raise _NOT_FAST
        return b"".join([write(v[field]) for field, write in fields])

    return write_record


def _union_writer(
    branches: list[Any], named: dict[str, Any], enclosing: tuple[str, ...]
) -> Callable[[Any], bytes]:
    # Only [null, T] / [T, null]: which branch a value takes is then unambiguous (fastavro
    # picks the first branch that validates; None validates only as null).
    kinds = [b if isinstance(b, str) else b.get("type") for b in branches]
    if len(branches) != 2 or kinds.count("null") != 1 or any(isinstance(b, list) for b in branches):
        raise _UnsupportedError("union")
    null_index = kinds.index("null")
    other = _writer_for(branches[1 - null_index], named, enclosing)
    null_tag = _zigzag(null_index)
    other_tag = _zigzag(1 - null_index)

    def write_optional(v: Any) -> bytes:
        if v is None:
            return null_tag
        if type(v) is dict and "-type" in v:  # fastavro's named-union notation
            raise _NOT_FAST
        return other_tag + other(v)

    return write_optional


def _array_writer(
    items: Any, named: dict[str, Any], enclosing: tuple[str, ...]
) -> Callable[[Any], bytes]:
    item_kind = items if isinstance(items, str) else None
    if item_kind in ("double", "float"):
        return _number_array_writer(item_kind)
    if item_kind == "string":
        return _string_array_writer()
    write_item = _writer_for(items, named, enclosing)

    def write_array(v: Any) -> bytes:
        if type(v) is not list:
            raise _NOT_FAST
        if not v:
            return _EMPTY_BLOCKS
        return b"".join([_zigzag(len(v)), *map(write_item, v), _EMPTY_BLOCKS])

    return write_array


def _number_array_writer(item_kind: str) -> Callable[[Any], bytes]:
    """An array of doubles or floats: one struct pack (or a NumPy row's bytes as they are)."""
    code = "d" if item_kind == "double" else "f"
    dtype = np.dtype("<f8" if item_kind == "double" else "<f4")
    packers: dict[int, Callable[..., bytes]] = {}

    def write_numbers(v: Any) -> bytes:
        if type(v) is not list:
            if type(v) is np.ndarray and v.dtype == dtype and v.ndim == 1:
                # A NumPy row (a batch's feature matrix): Avro writes IEEE doubles
                # (floats) little-endian, which is the array's memory as it is.
                n = len(v)
                if not n:
                    return _EMPTY_BLOCKS
                return b"".join((_zigzag(n), v.tobytes(), _EMPTY_BLOCKS))
            raise _NOT_FAST
        n = len(v)
        if not n:
            return _EMPTY_BLOCKS
        if not set(map(type, v)) <= _NUMBER_TYPES:  # one C-level pass over the items
            raise _NOT_FAST
        pack = packers.get(n)
        if pack is None:
            if len(packers) >= _MEMO_LIMIT:
                packers.clear()
            pack = packers[n] = struct.Struct(f"<{n}{code}").pack
        return b"".join((_zigzag(n), pack(*v), _EMPTY_BLOCKS))

    return write_numbers


def _string_array_writer() -> Callable[[Any], bytes]:
    # The same strings (feature names) come again and again: remember the last array
    # written. A tuple (which fastavro also writes as an array) cannot change, so the
    # same tuple object is the same bytes; a list is compared (C-level) and checked.
    last: list[Any] = [None, None, b""]  # the tuple, a copy of the list, their bytes

    def write_strings(v: Any) -> bytes:
        kind = type(v)
        if kind is tuple and v is last[0]:
            return last[2]  # type: ignore[no-any-return]
        if kind is not list and kind is not tuple:
            raise _NOT_FAST
        if not v:
            return _EMPTY_BLOCKS
        if set(map(type, v)) != _STR_TYPE:
            raise _NOT_FAST
        if kind is list and v == last[1]:
            return last[2]  # type: ignore[no-any-return]
        data = b"".join([_zigzag(len(v)), *map(_write_string, v), _EMPTY_BLOCKS])
        last[:] = (v, None, data) if kind is tuple else (None, list(v), data)
        return data

    return write_strings


def _map_writer(
    values: Any, named: dict[str, Any], enclosing: tuple[str, ...]
) -> Callable[[Any], bytes]:
    write_value = _writer_for(values, named, enclosing)

    def write_map(v: Any) -> bytes:
        if type(v) is not dict:
            raise _NOT_FAST
        if not v:
            return _EMPTY_BLOCKS
        parts = [_zigzag(len(v))]
        for key, item in v.items():
            parts.append(_write_string(key))
            parts.append(write_value(item))
        parts.append(_EMPTY_BLOCKS)
        return b"".join(parts)

    if values != "string":
        return write_map
    # Maps of short strings (segments, categories) repeat: remember the bytes of each
    # (key, value) sequence. Equal str keys and values write equal bytes; a first value
    # that is not exactly a str never gets here (write_map sends it to fastavro).
    memo: dict[tuple[tuple[Any, Any], ...], bytes] = {}

    def write_small_map(v: Any) -> bytes:
        if type(v) is not dict or len(v) > 16:
            return write_map(v)
        items = tuple(v.items())
        try:
            found = memo.get(items)
        except TypeError:  # an unhashable value: not a string, write_map sends it on
            return write_map(v)
        if found is not None:
            return found
        data = write_map(v)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[items] = data
        return data

    return write_small_map


_STRING_MEMO: dict[str, bytes] = {}


def _write_string(v: Any) -> bytes:
    if type(v) is not str:
        raise _NOT_FAST
    found = _STRING_MEMO.get(v)
    if found is not None:
        return found
    data = v.encode("utf-8")  # strict: a lone surrogate is left to fastavro
    data = _zigzag(len(data)) + data
    if len(v) <= 64:  # short strings repeat (names, categories, hashes): keep them
        if len(_STRING_MEMO) >= _MEMO_LIMIT:
            _STRING_MEMO.clear()
        _STRING_MEMO[v] = data
    return data


def _write_null(v: Any) -> bytes:
    if v is not None:
        raise _NOT_FAST
    return b""


def _write_boolean(v: Any) -> bytes:
    if v is True:
        return b"\x01"
    if v is False:
        return b"\x00"
    raise _NOT_FAST


def _write_int(v: Any) -> bytes:
    if type(v) is not int or not _INT_RANGE[0] <= v <= _INT_RANGE[1]:
        raise _NOT_FAST
    return _zigzag(v)


def _write_long(v: Any) -> bytes:
    if type(v) is not int or not _LONG_RANGE[0] <= v <= _LONG_RANGE[1]:
        raise _NOT_FAST
    return _zigzag(v)


_pack_float = struct.Struct("<f").pack
_pack_double = struct.Struct("<d").pack


def _write_float(v: Any) -> bytes:
    if type(v) is not float and type(v) is not int:
        raise _NOT_FAST
    return _pack_float(v)


def _write_double(v: Any) -> bytes:
    if type(v) is not float and type(v) is not int:
        raise _NOT_FAST
    return _pack_double(v)


def _write_bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise _NOT_FAST
    return _zigzag(len(v)) + v


_PRIMITIVE_WRITERS: dict[str, Callable[[Any], bytes]] = {
    "null": _write_null,
    "boolean": _write_boolean,
    "int": _write_int,
    "long": _write_long,
    "float": _write_float,
    "double": _write_double,
    "string": _write_string,
    "bytes": _write_bytes,
}
