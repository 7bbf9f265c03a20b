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

The package's modules, one part each (the names above are the public API; import them
from ``streamml.codec``):

* ``catalog``: schema files parsed once (fingerprints, canonical forms, conformance checks);
* ``writer``: the compiled writer (bodies byte-identical to fastavro's, faster);
* ``reader``: read plans (writer -> reader schema) and the compiled projection reader;
* ``framing``: the single-object and registry headers;
* ``registry``: the schema registry client (register, fetch writer schemas);
* ``compat``: the schema-evolution check (``check_compatibility``);
* ``avro``: :class:`AvroCodec`, which puts them together.
"""

from __future__ import annotations

from streamml.codec.avro import AvroCodec
from streamml.codec.catalog import default_schemas_dir
from streamml.codec.compat import check_compatibility
from streamml.codec.framing import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC
from streamml.codec.writer import _zigzag, encode_long, encode_string

# _zigzag: the compiled writer's varint, which tests/unit/test_codec.py checks against fastavro.
__all__ = [
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_MAGIC",
    "AvroCodec",
    "_zigzag",
    "check_compatibility",
    "default_schemas_dir",
    "encode_long",
    "encode_string",
]
