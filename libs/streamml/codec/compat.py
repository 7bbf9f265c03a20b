"""Schema evolution: can a new (reader) schema read what an old (writer) schema wrote?"""

from __future__ import annotations

import io
import json
import random
from typing import Any

import fastavro
from fastavro.utils import generate_many

from streamml.codec.catalog import _short, _strip_logical_types
from streamml.codec.spec import _COMPLEX, _PRIMITIVES

# Avro spec, schema resolution: the writer type (key) may be read as any of these.
_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset(("long", "float", "double")),
    "long": frozenset(("float", "double")),
    "float": frozenset(("double",)),
    "string": frozenset(("bytes",)),
    "bytes": frozenset(("string",)),
}


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
        else:
            self._compare_named(wtype, writer, reader, path)

    def _compare_named(
        self, kind: str, writer: dict[str, Any], reader: dict[str, Any], path: str
    ) -> None:
        """A fixed, enum or record read under the same name (or an alias)."""
        if kind == "fixed":
            if writer.get("size") != reader.get("size"):
                self.problems.append(
                    f"{path}: fixed size changed from {writer['size']} to {reader['size']}"
                )
        elif kind == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                self.problems.append(f"{path}: enum symbols removed without a default: {missing}")
        elif kind == "record":
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
