"""Avro encoding of every topic value, with schema resolution and two wire formats.

The schemas are the ``.avsc`` files in ``schemas/`` (one record per file, self-contained:
a named type such as ``CardTransaction`` is defined inside the record that uses it) plus
every earlier version kept in ``schemas/history/<RecordName>/v<N>.avsc``. Each file is
parsed once when the codec is built; nothing is parsed per message.

Wire formats:

* **Single-object encoding** (default, no registry): ``C3 01`` + the 8-byte little-endian
  CRC-64-AVRO fingerprint of the writer schema's parsing canonical form + the Avro binary
  body. The reader finds the writer schema by fingerprint among the current and historical
  schemas and resolves it to the reader schema, so old data stays readable.
* **Confluent Schema Registry** (``registry_url`` set): ``00`` + 4-byte big-endian schema
  id + the body. The schema is registered under ``<topic>-value`` on first encode; ids and
  the schemas fetched for them are cached. Decoding still accepts single-object bytes.

Timestamps: fields with ``logicalType: timestamp-millis`` are plain ``int`` epoch
milliseconds in both directions. ``encode`` takes ints (not ``datetime``) and ``decode``
returns ints; fastavro would turn them into ``datetime`` by default, so the codec reads and
writes with copies of the schemas whose logical-type annotations are removed. The
annotations stay in the files and in the registered schemas (the parsing canonical form,
hence the fingerprint, never includes them), so other languages still see timestamps.

Projections (reader side): ``decode(data, "FeatureVector[-names]")`` reads the value as
``FeatureVector`` without its ``names`` field; several: ``"FeatureVector[-names,-categories]"``.
The projection is the base record's current schema minus those top-level fields, used as
the Avro reader schema, so the decoder skips the dropped fields' bytes instead of building
Python objects for them; every other field decodes exactly as with the base name, from
every writer version the base can read, except that an array of doubles or floats read by
the compiled projection reader is a float64 NumPy array of its own (the same numbers, bit
for bit; a value fastavro reads instead, e.g. from a non-``bytes`` buffer, has a list).
It is built and checked once per name (an unknown field or a malformed name raises
:class:`~streamml.errors.SchemaError`) and cached like the rest. Projections are for
decoding only: ``encode`` takes the base name.

Errors: ``decode`` raises :class:`~streamml.errors.DecodeError` (with ``raw`` and
``topic``) for bad bytes; ``encode`` raises :class:`~streamml.errors.EncodeError` naming
the offending field; a registry that cannot be reached (or answers 5xx) raises
:class:`~streamml.errors.RegistryUnavailableError`, one that refuses the request (409
incompatible, 401/403, 422) :class:`~streamml.errors.RegistryRefusedError`: neither is a
fault of the record, so neither is a dead letter (see :mod:`streamml.faults`).

Example::

    >>> codec = AvroCodec()
    >>> label = {"event_id": "e1", "entity_id": "c1", "label": 1, "labeled_at": 1_700_000_000_000}
    >>> data = codec.encode("Label", label)
    >>> data[:2].hex()
    'c301'
    >>> codec.decode(data, "Label")["labeled_at"]
    1700000000000
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
import numpy as np
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.utils import generate_many
from fastavro.validation import ValidationError as AvroValidationError
from fastavro.validation import validate

from streamml.errors import (
    DecodeError,
    EncodeError,
    RegistryRefusedError,
    RegistryUnavailableError,
    SchemaError,
)

if TYPE_CHECKING:
    from streamml.settings import KafkaSettings

__all__ = [
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_MAGIC",
    "AvroCodec",
    "check_compatibility",
    "default_schemas_dir",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4
_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)
_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")
# A reader-side projection: "<Record>[-field,-field...]" (see the module docstring).
_PROJECTION = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*\[(.*)\]\s*$")
_FIELD_NAME = re.compile(r"^[A-Za-z_]\w*$")
_MAX_MESSAGE = 600

_PRIMITIVES = frozenset(("null", "boolean", "int", "long", "float", "double", "bytes", "string"))
_COMPLEX = frozenset(("record", "error", "enum", "fixed", "array", "map"))
# Avro spec, schema resolution: the writer type (key) may be read as any of these.
_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset(("long", "float", "double")),
    "long": frozenset(("float", "double")),
    "float": frozenset(("double",)),
    "string": frozenset(("bytes",)),
    "bytes": frozenset(("string",)),
}


def default_schemas_dir() -> Path:
    """The repository's ``schemas/`` directory (``libs/streamml/../../schemas``)."""
    return Path(__file__).resolve().parent.parent.parent / "schemas"


@dataclass(frozen=True, slots=True)
class _SchemaVersion:
    """One schema file, parsed once."""

    name: str  # record name without namespace: Event (a projection: "FeatureVector[-names]")
    full_name: str  # streamml.Event
    version: str  # "current" or "v<N>"
    source: str  # file (or registry id) it came from
    definition: Any  # the JSON as written, with docs and logical types
    parsed: Any  # fastavro-parsed copy without logical types: what reads and writes use
    canonical_form: str
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of canonical_form
    conforms: Callable[[Any], bool]  # fast, strict pre-check of a value before writing
    fast_write: Callable[[Any], bytes] | None  # compiled writer (None: schema not supported)


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    """How to read bytes of one writer schema as one reader schema (cached per pair)."""

    writer: Any
    reader: Any  # None when writer and reader are the same schema (fastest path)
    error: str | None  # set when the writer cannot be resolved to the reader
    # Compiled reader of a projection (None: fastavro reads): data, offset -> value.
    fast_read: Callable[[bytes, int], dict[str, Any]] | None = None


def _strip_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(item) for item in schema]
    return schema


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _load_version(definition: Any, version: str, source: str) -> _SchemaVersion:
    if not isinstance(definition, dict) or definition.get("type") != "record":
        raise SchemaError(f"{source}: the top-level schema must be a record")
    try:
        # Named types are scoped to the file: each file gets its own named-schema table.
        parsed = fastavro.parse_schema(_strip_logical_types(definition), {})
        canonical = to_parsing_canonical_form(parsed)
    except Exception as exc:
        raise SchemaError(f"{source}: not a valid Avro schema: {_short(str(exc))}") from exc
    full_name = str(definition["name"])
    if "." not in full_name and definition.get("namespace"):
        full_name = f"{definition['namespace']}.{full_name}"
    return _SchemaVersion(
        name=full_name.rsplit(".", 1)[-1],
        full_name=full_name,
        version=version,
        source=source,
        definition=definition,
        parsed=parsed,
        canonical_form=canonical,
        fingerprint=bytes.fromhex(avro_fingerprint(canonical, "CRC-64-AVRO")),
        conforms=_conformance_check(parsed),
        fast_write=_compile_writer(parsed),
    )


def _conformance_check(parsed: Any) -> Callable[[Any], bool]:
    """A validator compiled once per schema: True when ``value`` is surely writable as is.

    fastavro's ``validate`` interprets the schema on every call and costs three times the
    write itself; this closure tree does the common case in a fraction of that. It is
    stricter than fastavro (exact ``int``/``float``/``list`` types, no tuple notation), so a
    False only sends the value to fastavro's validator for the verdict and the message.
    """
    named: dict[str, Any] = {}
    fastavro.parse_schema(parsed, named)
    checks: dict[str, Callable[[Any], bool]] = {}
    return _compile_check(parsed, named, checks)


def _compile_check(
    schema: Any, named: dict[str, Any], checks: dict[str, Callable[[Any], bool]]
) -> Callable[[Any], bool]:
    if isinstance(schema, list):
        branches = [_compile_check(branch, named, checks) for branch in schema]
        return lambda v: any(branch(v) for branch in branches)
    if isinstance(schema, dict) and schema.get("type") not in _COMPLEX:
        return _compile_check(schema["type"], named, checks)
    if isinstance(schema, str):
        primitive = _PRIMITIVE_CHECKS.get(schema)
        if primitive is not None:
            return primitive
        if schema in checks:  # a (possibly recursive) reference: bind late
            return lambda v: checks[schema](v)  # noqa: PLW0108 (late binding)
        return _compile_check(named[schema], named, checks)
    kind = schema["type"]
    if kind == "array":
        item = _compile_check(schema["items"], named, checks)
        return lambda v: type(v) is list and all(item(x) for x in v)
    if kind == "map":
        value = _compile_check(schema["values"], named, checks)
        return lambda v: type(v) is dict and all(type(k) is str and value(x) for k, x in v.items())
    if kind == "enum":
        symbols = frozenset(schema["symbols"])
        return lambda v: type(v) is str and v in symbols
    if kind == "fixed":
        size = schema["size"]
        return lambda v: type(v) is bytes and len(v) == size
    name = str(schema["name"])
    checks[name] = lambda v: False  # replaced below; lets recursive fields refer to it
    fields = [
        (str(f["name"]), "default" in f, _compile_check(f["type"], named, checks))
        for f in schema["fields"]
    ]

    def record(v: Any) -> bool:
        if type(v) is not dict and not isinstance(v, Mapping):
            return False
        for field_name, has_default, check in fields:
            x = v.get(field_name, _MISSING)
            if x is _MISSING:
                if not has_default:
                    return False
            elif not check(x):
                return False
        return True

    checks[name] = record
    return record


_MISSING = object()
_PRIMITIVE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: v is True or v is False,
    "int": lambda v: type(v) is int and _INT_RANGE[0] <= v <= _INT_RANGE[1],
    "long": lambda v: type(v) is int and _LONG_RANGE[0] <= v <= _LONG_RANGE[1],
    "float": lambda v: type(v) is float or type(v) is int,
    "double": lambda v: type(v) is float or type(v) is int,
    "string": lambda v: type(v) is str,
    "bytes": lambda v: type(v) is bytes,
}


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
        indexes = {symbol: _zigzag(i) for i, symbol in enumerate(schema["symbols"])}

        def write_enum(v: Any) -> bytes:
            if type(v) is not str:
                raise _NOT_FAST
            return indexes[v]

        return write_enum
    if kind == "fixed":
        size = schema["size"]

        def write_fixed(v: Any) -> bytes:
            if type(v) is not bytes or len(v) != size:
                raise _NOT_FAST
            return v

        return write_fixed
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
    if item_kind == "string":
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
    write_item = _writer_for(items, named, enclosing)

    def write_array(v: Any) -> bytes:
        if type(v) is not list:
            raise _NOT_FAST
        if not v:
            return _EMPTY_BLOCKS
        return b"".join([_zigzag(len(v)), *map(write_item, v), _EMPTY_BLOCKS])

    return write_array


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


def _read_file(path: Path, version: str) -> _SchemaVersion:
    try:
        definition = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: cannot read schema: {exc}") from exc
    return _load_version(definition, version, str(path))


def _without_arrays(value: Any) -> Any:
    """``value`` with NumPy arrays turned into lists (for fastavro and its validator).

    Only the slow path needs it: the compiled writer takes a 1-D float64 (float32) array
    for an array of doubles (floats) as it is.
    """
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        if any(isinstance(v, np.ndarray | Mapping | list) for v in value.values()):
            return {k: _without_arrays(v) for k, v in value.items()}
        return value
    if isinstance(value, list):
        return [_without_arrays(v) for v in value]
    return value


class AvroCodec:
    """Encodes and decodes topic values with the schemas in ``schemas/``.

    Build one per process and share it: it holds the parsed schemas and the caches.
    Schema names are record names (``Event``, ``FeatureVector``, ...); the full name with
    namespace (``streamml.Event``) works too.
    """

    def __init__(
        self,
        schemas_dir: Path | None = None,
        *,
        registry_url: str | None = None,
        registry_config: dict[str, Any] | None = None,
    ) -> None:
        self._schemas_dir = Path(schemas_dir) if schemas_dir is not None else default_schemas_dir()
        self._current: dict[str, _SchemaVersion] = {}
        self._history: dict[str, list[_SchemaVersion]] = {}
        self._by_fingerprint: dict[bytes, _SchemaVersion] = {}
        self._plans: dict[tuple[bytes, str], _ReadPlan] = {}
        self._projections: dict[str, _SchemaVersion] = {}
        self._load()
        self._registry: Any = None
        self._registered_ids: dict[tuple[str, str], int] = {}
        self._registry_writers: dict[int, _SchemaVersion] = {}
        self._registry_plans: dict[tuple[int, str], _ReadPlan] = {}
        if registry_url:
            self._registry = _registry_client(registry_url, registry_config or {})

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> AvroCodec:
        """The codec for these Kafka settings: registry wire format if a registry URL is set."""
        # httpx (under the registry client) waits forever without a timeout: a registry
        # that hangs must fail the call, so the runtime retries instead of freezing.
        config: dict[str, Any] = {"timeout": _REGISTRY_TIMEOUT_S}
        if kafka.schema_registry_basic_auth is not None:
            config["basic.auth.user.info"] = kafka.schema_registry_basic_auth.get_secret_value()
        return cls(registry_url=kafka.schema_registry_url or None, registry_config=config)

    # -- schemas -------------------------------------------------------------------------

    def _load(self) -> None:
        if not self._schemas_dir.is_dir():
            raise SchemaError(f"schema directory {self._schemas_dir} does not exist")
        for path in sorted(self._schemas_dir.glob("*.avsc")):
            schema = _read_file(path, "current")
            if schema.name in self._current:
                raise SchemaError(
                    f"{path}: record {schema.name} is also defined in "
                    f"{self._current[schema.name].source}"
                )
            self._current[schema.name] = schema
            self._by_fingerprint[schema.fingerprint] = schema
        if not self._current:
            raise SchemaError(f"no *.avsc schema in {self._schemas_dir}")
        history_dir = self._schemas_dir / "history"
        if history_dir.is_dir():
            for record_dir in sorted(p for p in history_dir.iterdir() if p.is_dir()):
                self._history[record_dir.name] = self._load_history(record_dir)
        for versions in self._history.values():
            for schema in versions:
                # A version identical (canonically) to the current one adds nothing new.
                self._by_fingerprint.setdefault(schema.fingerprint, schema)

    def _load_history(self, record_dir: Path) -> list[_SchemaVersion]:
        numbered: list[tuple[int, _SchemaVersion]] = []
        for path in record_dir.glob("*.avsc"):
            match = _VERSION_FILE.match(path.name)
            if not match:
                raise SchemaError(f"{path}: history files are named v<N>.avsc")
            schema = _read_file(path, f"v{match.group(1)}")
            if schema.name != record_dir.name:
                raise SchemaError(
                    f"{path}: defines record {schema.name}, but lives in history/{record_dir.name}"
                )
            numbered.append((int(match.group(1)), schema))
        return [schema for _, schema in sorted(numbered, key=lambda item: item[0])]

    def _schema(self, name: str) -> _SchemaVersion:
        schema = self._current.get(name)
        if schema is None and isinstance(name, str) and "." in name:
            schema = self._current.get(name.rsplit(".", 1)[-1])
            if schema is not None and schema.full_name != name:
                schema = None
        if schema is None:
            known = ", ".join(sorted(self._current))
            raise SchemaError(f"unknown schema {name!r}; known: {known}")
        return schema

    def _reader(self, name: str) -> _SchemaVersion:
        """The reader schema for ``name``: a current schema or a projection of one."""
        schema = self._current.get(name) or self._projections.get(name)
        if schema is not None:
            return schema
        match = _PROJECTION.match(name) if isinstance(name, str) else None
        if match is None:
            return self._schema(name)
        return self._projection(name, match.group(1), match.group(2))

    def _projection(self, name: str, base_name: str, spec: str) -> _SchemaVersion:
        base = self._schema(base_name)
        drop: list[str] = []
        for raw_item in spec.split(","):
            item = raw_item.strip()
            field = item[1:].strip() if item.startswith("-") else ""
            if not _FIELD_NAME.match(field):
                raise SchemaError(
                    f"projection {name!r}: expected <Record>[-field,-field...], got {item!r}"
                )
            drop.append(field)
        fields = [str(f["name"]) for f in base.definition["fields"]]
        unknown = [field for field in drop if field not in fields]
        if unknown:
            raise SchemaError(
                f"projection {name!r}: {base.name} has no field {', '.join(unknown)}; "
                f"fields: {', '.join(fields)}"
            )
        definition = {
            **base.definition,
            "fields": [f for f in base.definition["fields"] if f["name"] not in drop],
        }
        source = f"{base.source} without {', '.join(drop)}"
        try:
            projected = _load_version(definition, base.version, source)
        except SchemaError as exc:  # e.g. a named type defined in a dropped field, used later
            raise SchemaError(f"projection {name!r}: {exc}") from exc
        projected = dataclasses.replace(projected, name=name)
        # Dropping reader fields only removes constraints; check it anyway, once per name.
        for writer in (base, *self._history.get(base.name, [])):
            if _plan(writer, base).error is None:
                error = _plan(writer, projected).error
                if error is not None:
                    raise SchemaError(f"projection {name!r}: {error}")
        self._projections[name] = projected
        return projected

    def schema_names(self) -> list[str]:
        """Record names of the current schemas, sorted."""
        return sorted(self._current)

    def parsed(self, schema: str) -> Any:
        """The parsed fastavro schema of ``schema`` (logical types removed: ints for times)."""
        return self._schema(schema).parsed

    def definition(self, schema: str) -> Any:
        """The schema as written in its file (docs and logical types included)."""
        return self._schema(schema).definition

    def fingerprint(self, schema: str) -> bytes:
        """The 8-byte little-endian CRC-64-AVRO fingerprint used in single-object headers."""
        return self._schema(schema).fingerprint

    def history(self, schema: str) -> list[Any]:
        """The committed earlier versions of ``schema`` (JSON definitions, oldest first)."""
        name = self._schema(schema).name
        return [version.definition for version in self._history.get(name, [])]

    def writer_schema_name(self, data: bytes) -> str | None:
        """The record name of the known schema that wrote ``data``, or None if unknown."""
        if data[:2] == SINGLE_OBJECT_MAGIC and len(data) >= _SINGLE_OBJECT_HEADER:
            schema = self._by_fingerprint.get(bytes(data[2:_SINGLE_OBJECT_HEADER]))
            return schema.name if schema is not None else None
        if data[:1] == CONFLUENT_MAGIC and len(data) >= _CONFLUENT_HEADER and self._registry:
            try:
                return self._registry_writer(int.from_bytes(data[1:5], "big")).name
            except (DecodeError, SchemaError):
                return None
        return None

    # -- encode --------------------------------------------------------------------------

    def encode(self, schema: str, value: Mapping[str, Any], *, topic: str | None = None) -> bytes:
        """Encode ``value`` with the current ``schema``; ``topic`` names the registry subject.

        Raises EncodeError when the value does not match the schema (the message names the
        field). The value is validated first: fastavro's writer alone would, for example,
        silently truncate 1.5 into a long or write True as 1.
        """
        writer = self._schema(schema)
        body: bytes | None = None
        if writer.fast_write is not None:
            try:
                body = writer.fast_write(value)
            except _FAST_ERRORS:
                body = None  # not the common case: validate and write with fastavro
        if body is not None:
            if self._registry is None:
                return SINGLE_OBJECT_MAGIC + writer.fingerprint + body
            if not topic:
                raise EncodeError(
                    f"{writer.name}: a topic is needed to encode with a schema registry"
                )
            header = CONFLUENT_MAGIC + self._registered_id(topic, writer).to_bytes(4, "big")
            return header + body
        if not isinstance(value, Mapping):
            raise EncodeError(f"{writer.name}: expected a mapping, got {type(value).__name__}")
        value = _without_arrays(value)
        if not writer.conforms(value):
            # The fast check is stricter than fastavro's validator (e.g. exact int and float
            # types); fastavro decides and words the error, naming the field.
            try:
                validate(value, writer.parsed, raise_errors=True)
            except AvroValidationError as exc:
                problems = "; ".join(str(error) for error in exc.errors) or str(exc)
                raise EncodeError(
                    _short(f"value does not match schema {writer.name}: {problems}")
                ) from exc
        out = io.BytesIO()
        if self._registry is not None:
            if not topic:
                raise EncodeError(
                    f"{writer.name}: a topic is needed to encode with a schema registry"
                )
            out.write(CONFLUENT_MAGIC)
            out.write(self._registered_id(topic, writer).to_bytes(4, "big"))
        else:
            out.write(SINGLE_OBJECT_MAGIC)
            out.write(writer.fingerprint)
        try:
            fastavro.schemaless_writer(out, writer.parsed, value)
        except Exception as exc:  # validation passed, so this is a fastavro corner case
            raise EncodeError(_short(f"cannot encode {writer.name}: {exc}")) from exc
        return out.getvalue()

    # -- decode --------------------------------------------------------------------------

    def decode(self, data: bytes, schema: str, *, topic: str | None = None) -> dict[str, Any]:
        """Decode ``data`` (single-object or registry wire format) as the current ``schema``.

        The writer schema comes from the bytes (fingerprint or registry id) and is resolved
        to ``schema``: fields the writer lacks get their defaults. ``schema`` may be a
        projection such as ``"FeatureVector[-names]"`` (module docstring): the value then
        lacks the dropped fields. Raises DecodeError (SchemaError for a bad schema name).
        """
        reader = self._reader(schema)
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < _SINGLE_OBJECT_HEADER:
                raise DecodeError(
                    f"truncated single-object header ({len(data)} bytes)", topic=topic, raw=data
                )
            plan = self._plans.get((bytes(data[2:_SINGLE_OBJECT_HEADER]), reader.name))
            if plan is None:
                plan = self._single_object_plan(data, reader, topic)
            offset = _SINGLE_OBJECT_HEADER
        elif data[:1] == CONFLUENT_MAGIC:
            if self._registry is None:
                raise DecodeError(
                    "schema-registry wire format (magic byte 0) but no schema registry is "
                    "configured (STREAMML_KAFKA_SCHEMA_REGISTRY_URL)",
                    topic=topic,
                    raw=data,
                )
            if len(data) < _CONFLUENT_HEADER:
                raise DecodeError(
                    f"truncated schema-registry header ({len(data)} bytes)", topic=topic, raw=data
                )
            plan = self._registry_plan(int.from_bytes(data[1:5], "big"), reader, data, topic)
            offset = _CONFLUENT_HEADER
        else:
            raise DecodeError(
                f"unknown magic bytes {bytes(data[:2]).hex() or '(empty)'}: expected c301 "
                "(Avro single-object) or 00 (schema registry)",
                topic=topic,
                raw=data,
            )
        if plan.error is not None:
            raise DecodeError(plan.error, topic=topic, raw=data)
        if plan.fast_read is not None and type(data) is bytes:
            try:
                return plan.fast_read(data, offset)
            except _READ_ERRORS:
                pass  # not the common case: fastavro reads it (or words the error)
        body = io.BytesIO(data)
        body.seek(offset)
        try:
            value = fastavro.schemaless_reader(body, plan.writer, plan.reader)
        except Exception as exc:  # fastavro raises many types on garbage; all mean bad bytes
            detail = str(exc) or "the body ends early"
            raise DecodeError(
                _short(f"invalid {reader.name} body: {type(exc).__name__}: {detail}"),
                topic=topic,
                raw=data,
            ) from exc
        if body.tell() != len(data):
            raise DecodeError(
                f"{len(data) - body.tell()} trailing bytes after the {reader.name} body",
                topic=topic,
                raw=data,
            )
        return value  # type: ignore[return-value]  # a record schema always reads a dict

    def _single_object_plan(
        self, data: bytes, reader: _SchemaVersion, topic: str | None
    ) -> _ReadPlan:
        fingerprint = bytes(data[2:_SINGLE_OBJECT_HEADER])
        writer = self._by_fingerprint.get(fingerprint)
        if writer is None:
            # Not cached: an unknown fingerprint could be anything, keep the cache bounded.
            raise DecodeError(
                f"unknown writer schema fingerprint {fingerprint.hex()} (not in schemas/ "
                "or schemas/history/)",
                topic=topic,
                raw=data,
            )
        plan = _plan(writer, reader)
        self._plans[(fingerprint, reader.name)] = plan
        return plan

    # -- schema registry -----------------------------------------------------------------

    def _registered_id(self, topic: str, writer: _SchemaVersion) -> int:
        subject = f"{topic}-value"
        key = (subject, writer.full_name)
        schema_id = self._registered_ids.get(key)
        if schema_id is None:
            from confluent_kafka.schema_registry import Schema  # lazy: optional extra

            try:
                schema_id = int(
                    self._registry.register_schema(
                        subject, Schema(json.dumps(writer.definition), "AVRO")
                    )
                )
            except Exception as exc:
                raise _registry_fault(
                    exc, f"cannot register {writer.name} under subject {subject}"
                ) from exc
            self._registered_ids[key] = schema_id
            self._registry_writers.setdefault(schema_id, writer)
        return schema_id

    def _registry_writer(self, schema_id: int) -> _SchemaVersion:
        writer = self._registry_writers.get(schema_id)
        if writer is not None:
            return writer
        from confluent_kafka.schema_registry.error import (  # lazy: optional extra
            SchemaRegistryError,
        )

        try:
            registered = self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise DecodeError(f"schema id {schema_id} is not in the registry") from exc
            raise _registry_fault(exc, f"looking up schema id {schema_id}") from exc
        except Exception as exc:
            raise _registry_fault(exc, f"looking up schema id {schema_id}") from exc
        if (registered.schema_type or "AVRO") != "AVRO":
            raise DecodeError(f"schema id {schema_id} is {registered.schema_type}, not Avro")
        try:
            writer = _load_version(
                json.loads(registered.schema_str), f"id {schema_id}", f"registry id {schema_id}"
            )
        except (ValueError, SchemaError) as exc:
            raise DecodeError(_short(f"schema id {schema_id} is not usable: {exc}")) from exc
        self._registry_writers[schema_id] = writer
        return writer

    def _registry_plan(
        self, schema_id: int, reader: _SchemaVersion, data: bytes, topic: str | None
    ) -> _ReadPlan:
        plan = self._registry_plans.get((schema_id, reader.name))
        if plan is None:
            try:
                writer = self._registry_writer(schema_id)
            except DecodeError as exc:
                raise DecodeError(str(exc), topic=topic, raw=data) from exc
            plan = _plan(writer, reader)
            self._registry_plans[(schema_id, reader.name)] = plan
        return plan


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
        kinds = [b if isinstance(b, str) else b.get("type") for b in schema]
        if len(schema) != 2 or kinds.count("null") != 1:
            raise _UnsupportedError("union")
        null_index = kinds.index("null")
        other = _reader_for(schema[1 - null_index])

        def read_optional(data: bytes, pos: int) -> tuple[Any, int]:
            index, pos = _read_varint(data, pos)
            if index == null_index:
                return None, pos
            if index != 1 - null_index:
                raise _NOT_FAST
            return other(data, pos)

        return read_optional
    kind = schema.get("type")
    if kind == "array" and schema["items"] in _NUMBER_DTYPES:
        return _number_array_reader(_NUMBER_DTYPES[schema["items"]])
    if kind == "array":
        item = _reader_for(schema["items"])

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
    if kind == "map":
        value = _reader_for(schema["values"])

        def read_map(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
            out: dict[str, Any] = {}
            count, pos = _block_count(data, pos)
            while count:
                for _ in range(count):
                    k, pos = _read_string(data, pos)
                    out[k], pos = value(data, pos)
                count, pos = _block_count(data, pos)
            return out, pos

        if schema["values"] == "string":
            return _remembering_string_map(read_map)
        return read_map
    raise _UnsupportedError(str(kind))


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


_REGISTRY_TIMEOUT_S = 10


def _registry_fault(exc: Exception, doing: str) -> SchemaError:
    """The typed error for a failed registry call: unavailable (retry) or refused (fix)."""
    status = getattr(exc, "http_status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        # 409 (incompatible schema), 401/403 (credentials), 422 (invalid schema): waiting
        # does not change the answer.
        if status in (401, 403):
            setting, fix = "STREAMML_KAFKA_SCHEMA_REGISTRY_BASIC_AUTH", "check the credentials"
        elif status == 409:
            setting = None
            fix = "make the schema in schemas/ compatible or change the subject's compatibility"
        else:
            setting, fix = None, "check the schema and the registry"
        return RegistryRefusedError(
            _short(f"schema registry refused ({doing}): {exc}") + f"; {fix}", setting=setting
        )
    return RegistryUnavailableError(_short(f"schema registry unavailable ({doing}): {exc}"))


def _registry_client(url: str, config: dict[str, Any]) -> Any:
    try:
        from confluent_kafka.schema_registry import (  # lazy: optional extra, heavy
            SchemaRegistryClient,
        )
    except ImportError as exc:  # the [schemaregistry] extra of confluent-kafka
        raise SchemaError(
            f"schema registry support needs confluent-kafka[schemaregistry]: {exc}"
        ) from exc
    conf = {**config, "url": url}
    try:
        # new_client() returns the in-memory MockSchemaRegistryClient for mock:// URLs.
        factory = getattr(SchemaRegistryClient, "new_client", SchemaRegistryClient)
        return factory(conf)
    except Exception as exc:
        raise SchemaError(_short(f"schema registry settings: {exc}")) from exc


# -- schema evolution --------------------------------------------------------------------


def _as_parsed(schema: Any) -> Any:
    if isinstance(schema, str):
        schema = json.loads(schema)
    if isinstance(schema, dict) and "__fastavro_parsed" in schema:
        return schema
    return fastavro.parse_schema(_strip_logical_types(schema), {})


def check_compatibility(old_schema: Any, new_schema: Any, *, samples: int = 25) -> list[str]:
    """Problems that stop ``new_schema`` (reader) from reading data written with ``old_schema``.

    An empty list means backward compatible. Schemas are JSON strings, dicts, or parsed.
    Two checks: the Avro resolution rules applied to the structure (new fields need a
    default, types must be equal or promotable, enum symbols kept, names match), and a
    real round trip: ``samples`` random records written with the old schema are read with
    the new one by fastavro (deterministic seed, the global random state is restored).

    >>> old = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}
    >>> new = {"type": "record", "name": "R", "fields": [
    ...     {"name": "a", "type": "long"}, {"name": "b", "type": "string"}]}
    >>> check_compatibility(old, new)
    ['R.b: field added without a default']
    """
    try:
        writer = _as_parsed(old_schema)
        reader = _as_parsed(new_schema)
    except Exception as exc:
        return [f"unparsable schema: {_short(str(exc))}"]
    problems = _structural_problems(writer, reader)
    if samples > 0 and not problems:
        state = random.getstate()
        random.seed(20261122)
        try:
            records = list(generate_many(writer, samples))
        finally:
            random.setstate(state)
        for record in records:
            out = io.BytesIO()
            fastavro.schemaless_writer(out, writer, record)
            out.seek(0)
            try:
                fastavro.schemaless_reader(out, writer, reader)
            except Exception as exc:
                problems.append(
                    _short(f"a record written with the old schema cannot be read: {exc}")
                )
                break
    return problems


def _named_table(schema: Any) -> dict[str, Any]:
    table: dict[str, Any] = {}
    fastavro.parse_schema(schema, table)
    return table


def _structural_problems(writer: Any, reader: Any) -> list[str]:
    root = str(reader.get("name", "")).rsplit(".", 1)[-1] if isinstance(reader, dict) else ""
    resolver = _Resolution(_named_table(writer), _named_table(reader))
    resolver.compare(writer, reader, root)
    return resolver.problems


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    """Follow a name reference, unwrap ``{"type": "long"}``: the schema a value has."""
    if isinstance(schema, str) and schema not in _PRIMITIVES:
        return named.get(schema, schema)
    if isinstance(schema, dict) and schema.get("type") not in _COMPLEX:
        inner = schema.get("type")
        return inner if isinstance(inner, dict | list) else _resolve(inner, named)
    return schema


def _type_of(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        kind = schema.get("type")
        return "record" if kind == "error" else str(kind)
    return str(schema)


def _names(schema: dict[str, Any]) -> set[str]:
    name = str(schema.get("name", ""))
    namespace = name.rsplit(".", 1)[0] if "." in name else ""
    names = {name, name.rsplit(".", 1)[-1]}
    for alias in schema.get("aliases", []):
        names.add(alias)
        if namespace and "." not in alias:
            names.add(f"{namespace}.{alias}")
    return names


class _Resolution:
    """The Avro spec's schema-resolution rules, applied to a writer/reader pair of schemas."""

    def __init__(self, writer_names: dict[str, Any], reader_names: dict[str, Any]) -> None:
        self.writer_names = writer_names
        self.reader_names = reader_names
        self.problems: list[str] = []
        self._visited: set[tuple[str, str]] = set()

    def readable(self, writer: Any, reader: Any) -> bool:
        probe = _Resolution(self.writer_names, self.reader_names)
        probe._visited = set(self._visited)
        probe.compare(writer, reader, "")
        return not probe.problems

    def compare(self, writer: Any, reader: Any, path: str) -> None:
        writer = _resolve(writer, self.writer_names)
        reader = _resolve(reader, self.reader_names)
        wtype, rtype = _type_of(writer), _type_of(reader)
        if wtype == "union":
            for branch in writer:
                self.compare(branch, reader, path)
        elif rtype == "union":
            if not any(self.readable(writer, branch) for branch in reader):
                branches = ", ".join(_type_of(_resolve(b, self.reader_names)) for b in reader)
                self.problems.append(f"{path}: no branch of [{branches}] can read {wtype}")
        elif wtype in _PRIMITIVES:
            if rtype != wtype and rtype not in _PROMOTIONS.get(wtype, frozenset()):
                self.problems.append(f"{path}: type changed from {wtype} to {rtype}")
        elif wtype != rtype:
            self.problems.append(f"{path}: type changed from {wtype} to {rtype}")
        elif wtype == "array":
            self.compare(writer["items"], reader["items"], path + "[]")
        elif wtype == "map":
            self.compare(writer["values"], reader["values"], path + "{}")
        elif str(writer["name"]) not in _names(reader):
            self.problems.append(f"{path}: {wtype} {writer['name']} renamed to {reader['name']}")
        elif wtype == "fixed":
            if writer.get("size") != reader.get("size"):
                self.problems.append(
                    f"{path}: fixed size changed from {writer['size']} to {reader['size']}"
                )
        elif wtype == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                self.problems.append(f"{path}: enum symbols removed without a default: {missing}")
        elif wtype == "record":
            key = (str(writer["name"]), str(reader["name"]))
            if key not in self._visited:  # a recursive type is compared once
                self._visited.add(key)
                self._compare_fields(writer, reader, path)

    def _compare_fields(self, writer: dict[str, Any], reader: dict[str, Any], path: str) -> None:
        written = {field["name"]: field for field in writer["fields"]}
        for field in reader["fields"]:
            where = f"{path}.{field['name']}" if path else str(field["name"])
            candidates = [field["name"], *field.get("aliases", [])]
            source = next((written[name] for name in candidates if name in written), None)
            if source is None:
                if "default" not in field:
                    self.problems.append(f"{where}: field added without a default")
            else:
                self.compare(source["type"], field["type"], where)
