"""Read plans (writer schema -> reader schema) and the compiled projection reader."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamml.codec.catalog import _SchemaVersion, _short
from streamml.codec.compat import _names, _structural_problems
from streamml.codec.spec import _COMPLEX
from streamml.codec.writer import _NOT_FAST, _NotFastError, _UnsupportedError


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    """How to read bytes of one writer schema as one reader schema (cached per pair)."""

    writer: Any
    reader: Any  # None when writer and reader are the same schema (fastest path)
    error: str | None  # set when the writer cannot be resolved to the reader
    # Compiled reader of a projection (None: fastavro reads): data, offset -> value.
    fast_read: Callable[[bytes, int], dict[str, Any]] | None = None


def _plan(writer: _SchemaVersion, reader: _SchemaVersion) -> _ReadPlan:
    if writer.fingerprint == reader.fingerprint:
        return _ReadPlan(writer=reader.parsed, reader=None, error=None)
    reader_name = reader.name.split("[", 1)[0].rsplit(".", 1)[-1]  # a projection: its base
    if writer.name != reader_name and writer.full_name not in _names(reader.definition):
        return _ReadPlan(
            writer=writer.parsed,
            reader=reader.parsed,
            error=f"these bytes were written as {writer.name}, not {reader.name}",
        )
    problems = _structural_problems(writer.parsed, reader.parsed)
    if problems:
        where = f"{writer.full_name} ({writer.version}, {writer.source})"
        return _ReadPlan(
            writer=writer.parsed,
            reader=reader.parsed,
            error=_short(
                f"writer schema {where} cannot be read as {reader.full_name}: "
                + "; ".join(problems)
            ),
        )
    fast_read = None
    if "[" in reader.name:
        fast_read = _compile_projection_reader(writer.parsed, reader.parsed)
    return _ReadPlan(writer=writer.parsed, reader=reader.parsed, error=None, fast_read=fast_read)


# -- the compiled projection reader --------------------------------------------------------
#
# fastavro skips a field it does not read at the cost of reading it (~17 us for the 88
# names of a FeatureVector, the same as decoding them), so a projection read by fastavro
# saves nothing. A projection of a writer whose kept fields have the very same types is
# read by this closure tree instead. A skipped array or map whose bytes equal the ones
# skipped last time (a feature set's names repeat in every vector) is passed over with one
# ``startswith``, and a map of strings whose bytes equal a map read before (the categories
# of a vector take few distinct values) is a copy of the value read then - the same bytes
# from the same position parse the same way, so both are exact. An array of doubles (or
# floats) is read as one float64 NumPy array copied from the bytes with one
# ``np.frombuffer`` (same numbers, bit for bit, as fastavro's list; a consumer that stacks
# rows into a matrix skips 88 Python floats per vector). Everything else is what fastavro
# returns (tests/unit/test_codec.py compares them); anything unusual (a type it does not
# handle, bad or trailing bytes, a boolean byte other than 0/1) raises and the value is
# read by fastavro, which decides and words the error (and returns lists for arrays).

_READ_ERRORS = (_NotFastError, IndexError, ValueError, struct.error, UnicodeDecodeError)
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_NUMBER_DTYPES: dict[str, np.dtype[Any]] = {"double": np.dtype("<f8"), "float": np.dtype("<f4")}
_MAP_MEMO_SIZE = 4096

_Reader = Callable[[bytes, int], tuple[Any, int]]
_Skipper = Callable[[bytes, int], int]


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    pos += 1
    if b < 128:
        return (b >> 1) ^ -(b & 1), pos
    n = b & 0x7F
    shift = 7
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 128:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise _NOT_FAST


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    n = data[pos]
    if n < 128 and not n & 1:  # a length below 64 is one byte: no varint call
        pos += 1
        end = pos + (n >> 1)
    else:
        n, pos = _read_varint(data, pos)
        end = pos + n
        if n < 0:
            raise _NOT_FAST
    if end > len(data):
        raise _NOT_FAST
    return data[pos:end].decode("utf-8"), end


def _skip_string(data: bytes, pos: int) -> int:
    n, pos = _read_varint(data, pos)
    end = pos + n
    if n < 0 or end > len(data):
        raise _NOT_FAST
    return end


def _read_double(data: bytes, pos: int) -> tuple[float, int]:
    return _DOUBLE.unpack_from(data, pos)[0], pos + 8


def _read_float(data: bytes, pos: int) -> tuple[float, int]:
    return _FLOAT.unpack_from(data, pos)[0], pos + 4


def _read_boolean(data: bytes, pos: int) -> tuple[bool, int]:
    b = data[pos]
    if b > 1:
        raise _NOT_FAST
    return b == 1, pos + 1


def _block_count(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    if b < 128 and not b & 1:  # a count below 64 in one byte: no varint call
        return b >> 1, pos + 1
    count, pos = _read_varint(data, pos)
    if count < 0:  # a negative count is followed by the block's size in bytes
        count = -count
        _, pos = _read_varint(data, pos)
    return count, pos


_PRIMITIVE_READERS: dict[str, _Reader] = {
    "int": _read_varint,
    "long": _read_varint,
    "string": _read_string,
    "double": _read_double,
    "float": _read_float,
    "boolean": _read_boolean,
}
_PRIMITIVE_SIZES = {"double": 8, "float": 4, "boolean": 1}


def _reader_for(schema: Any) -> _Reader:
    if isinstance(schema, dict) and schema.get("type") not in _COMPLEX:
        return _reader_for(schema["type"])
    if isinstance(schema, str):
        primitive = _PRIMITIVE_READERS.get(schema)
        if primitive is None:
            raise _UnsupportedError(schema)
        return primitive
    if isinstance(schema, list):
        return _optional_reader(schema)
    kind = schema.get("type")
    if kind == "array" and schema["items"] in _NUMBER_DTYPES:
        return _number_array_reader(_NUMBER_DTYPES[schema["items"]])
    if kind == "array":
        return _array_reader(_reader_for(schema["items"]))
    if kind == "map":
        read_map = _map_reader(_reader_for(schema["values"]))
        if schema["values"] == "string":
            return _remembering_string_map(read_map)
        return read_map
    raise _UnsupportedError(str(kind))


def _optional_reader(branches: list[Any]) -> _Reader:
    """A ``[null, T]`` (or ``[T, null]``) union; any other union is left to fastavro."""
    kinds = [b if isinstance(b, str) else b.get("type") for b in branches]
    if len(branches) != 2 or kinds.count("null") != 1:
        raise _UnsupportedError("union")
    null_index = kinds.index("null")
    other = _reader_for(branches[1 - null_index])

    def read_optional(data: bytes, pos: int) -> tuple[Any, int]:
        index, pos = _read_varint(data, pos)
        if index == null_index:
            return None, pos
        if index != 1 - null_index:
            raise _NOT_FAST
        return other(data, pos)

    return read_optional


def _array_reader(item: _Reader) -> _Reader:
    def read_array(data: bytes, pos: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        count, pos = _block_count(data, pos)
        while count:
            for _ in range(count):
                x, pos = item(data, pos)
                out.append(x)
            count, pos = _block_count(data, pos)
        return out, pos

    return read_array


def _map_reader(value: _Reader) -> _Reader:
    def read_map(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        count, pos = _block_count(data, pos)
        while count:
            for _ in range(count):
                k, pos = _read_string(data, pos)
                out[k], pos = value(data, pos)
            count, pos = _block_count(data, pos)
        return out, pos

    return read_map


def _number_array_reader(dtype: np.dtype[Any]) -> _Reader:
    size = dtype.itemsize

    def read_numbers(data: bytes, pos: int) -> tuple[np.ndarray[Any, np.dtype[np.float64]], int]:
        count, pos = _block_count(data, pos)
        blocks = []
        while count:
            end = pos + count * size
            if end > len(data):
                raise _NOT_FAST
            blocks.append(np.frombuffer(data, dtype, count, pos))
            count, pos = _block_count(data, end)
        if not blocks:
            return np.empty(0, dtype=np.float64), pos
        numbers = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        # A copy in native float64: owns its memory (not a view of the record's bytes).
        return numbers.astype(np.float64), pos

    return read_numbers


def _remembering_string_map(read_map: _Reader) -> _Reader:
    """``read_map`` for a map of strings, remembering the maps read by their bytes.

    Finding a map's end costs one length byte per string; a map seen before is then a
    dict copy instead of a decode per key and value. At most ``_MAP_MEMO_SIZE`` maps are
    kept (all forgotten when full, so a changing mix of values is remembered afresh).
    """
    seen: dict[bytes, dict[str, Any]] = {}

    def read_string_map(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        start = pos
        count, pos = _block_count(data, pos)
        while count:
            for _ in range(2 * count):  # a key and a value per entry
                n = data[pos]
                if n < 128 and not n & 1:
                    pos += 1 + (n >> 1)
                else:
                    pos = _skip_string(data, pos)
            count, pos = _block_count(data, pos)
        if pos > len(data):
            raise _NOT_FAST
        raw = data[start:pos]
        known = seen.get(raw)
        if known is None:
            known, end = read_map(data, start)
            if end != pos:  # cannot happen: both walk the same lengths
                raise _NOT_FAST
            if len(seen) >= _MAP_MEMO_SIZE:
                seen.clear()
            seen[raw] = known
        return dict(known), pos

    return read_string_map


def _skipper_for(schema: Any) -> _Skipper:
    read = _reader_for(schema)  # validates that the type is supported
    if isinstance(schema, dict) and schema.get("type") in ("array", "map"):
        # Memo: the bytes last skipped for this field; equal bytes parse the same way.
        last = [b""]

        def skip_repeating(data: bytes, pos: int) -> int:
            memo = last[0]
            if memo and data.startswith(memo, pos):
                return pos + len(memo)
            _, end = read(data, pos)
            last[0] = bytes(data[pos:end])
            return end

        return skip_repeating
    if schema == "string":
        return _skip_string
    size = _PRIMITIVE_SIZES.get(schema) if isinstance(schema, str) else None
    if size is not None and schema != "boolean":
        return lambda data, pos: pos + size

    def skip(data: bytes, pos: int) -> int:
        return read(data, pos)[1]

    return skip


def _compile_projection_reader(
    writer: Any, reader: Any
) -> Callable[[bytes, int], dict[str, Any]] | None:
    """A reader of ``writer`` bytes as the projection ``reader``, or None when some kept
    field's type differs between the two or a type is not one the compiled reader takes."""
    if not isinstance(writer, dict) or not isinstance(reader, dict):
        return None
    kept = {str(f["name"]): f["type"] for f in reader["fields"]}
    steps: list[tuple[str | None, _Reader | _Skipper]] = []
    try:
        for field in writer["fields"]:
            name = str(field["name"])
            if name in kept:
                if kept.pop(name) != field["type"]:
                    return None
                steps.append((name, _reader_for(field["type"])))
            else:
                steps.append((None, _skipper_for(field["type"])))
    except (_UnsupportedError, KeyError, TypeError):
        return None
    if kept:  # a reader field the writer lacks: defaults are fastavro's business
        return None
    order = [str(f["name"]) for f in reader["fields"]]
    in_order = order == [name for name, _ in steps if name is not None]
    plan = tuple(steps)

    def read(data: bytes, pos: int) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, step in plan:
            if name is None:
                pos = step(data, pos)  # type: ignore[assignment]
            else:
                found[name], pos = step(data, pos)  # type: ignore[misc]
        if pos != len(data):
            raise _NOT_FAST
        return found if in_order else {name: found[name] for name in order}

    return read
