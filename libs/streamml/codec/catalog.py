"""The schema catalog: schema files parsed once into versions with fingerprints and checks."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from streamml.codec.spec import _COMPLEX, _INT_RANGE, _LONG_RANGE
from streamml.codec.writer import _compile_writer
from streamml.errors import SchemaError

_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")
# A reader-side projection: "<Record>[-field,-field...]" (see the module docstring).
_PROJECTION = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*\[(.*)\]\s*$")
_FIELD_NAME = re.compile(r"^[A-Za-z_]\w*$")
_MAX_MESSAGE = 600


def default_schemas_dir() -> Path:
    """The repository's ``schemas/`` directory (``libs/streamml/codec/../../../schemas``)."""
    return Path(__file__).resolve().parent.parent.parent.parent / "schemas"


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
    return _compile_record_check(schema, named, checks)


def _compile_record_check(
    schema: dict[str, Any], named: dict[str, Any], checks: dict[str, Callable[[Any], bool]]
) -> Callable[[Any], bool]:
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


def _read_file(path: Path, version: str) -> _SchemaVersion:
    try:
        definition = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: cannot read schema: {exc}") from exc
    return _load_version(definition, version, str(path))
