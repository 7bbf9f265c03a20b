"""The codec: encode and decode topic values in either wire format (see :mod:`streamml.codec`)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
import numpy as np
from fastavro.validation import ValidationError as AvroValidationError
from fastavro.validation import validate

from streamml.codec.catalog import (
    _FIELD_NAME,
    _PROJECTION,
    _VERSION_FILE,
    _load_version,
    _read_file,
    _SchemaVersion,
    _short,
    default_schemas_dir,
)
from streamml.codec.framing import (
    _CONFLUENT_HEADER,
    _SINGLE_OBJECT_HEADER,
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
)
from streamml.codec.reader import _READ_ERRORS, _plan, _ReadPlan
from streamml.codec.registry import _registry_client, fetch_writer, register_schema, registry_config
from streamml.codec.writer import _FAST_ERRORS
from streamml.errors import DecodeError, EncodeError, SchemaError

if TYPE_CHECKING:
    from streamml.settings import KafkaSettings


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
        return cls(
            registry_url=kafka.schema_registry_url or None, registry_config=registry_config(kafka)
        )

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
            schema_id = register_schema(self._registry, subject, writer)
            self._registered_ids[key] = schema_id
            self._registry_writers.setdefault(schema_id, writer)
        return schema_id

    def _registry_writer(self, schema_id: int) -> _SchemaVersion:
        writer = self._registry_writers.get(schema_id)
        if writer is not None:
            return writer
        writer = fetch_writer(self._registry, schema_id)
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
