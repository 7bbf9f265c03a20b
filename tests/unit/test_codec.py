"""The Avro codec: round trips, wire formats, schema resolution and every error path."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import fastavro.validation
import numpy as np
import pytest
from confluent_kafka.schema_registry import Schema
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.utils import generate_one
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamml.codec import AvroCodec, check_compatibility, default_schemas_dir
from streamml.errors import DecodeError, EncodeError, SchemaError
from streamml.settings import KafkaSettings

SCHEMAS = default_schemas_dir()
EPOCH_MS = 1_795_000_000_000  # 2026-11-18

EVENT = {
    "event_id": "0b7c5a2e-9b61-4d59-8a7e-3f0f4e1c2d11",
    "entity_id": "card-42",
    "event_time": EPOCH_MS,
    "event_type": "card_transaction",
    "payload": {
        "amount": 12.5,
        "currency": "EUR",
        "merchant_id": "m-1",
        "merchant_category": "5411",
        "country": "DE",
        "channel": "pos",
        "card_present": True,
        "device_age_days": None,
        "customer_age_years": 41,
    },
    "produced_at": EPOCH_MS + 3,
}

LABEL_V1 = {
    "type": "record",
    "name": "Label",
    "namespace": "streamml",
    "doc": "v1 of a label, before `source` existed.",
    "fields": [
        {"name": "event_id", "type": "string", "doc": "Event."},
        {"name": "entity_id", "type": "string", "doc": "Entity."},
        {"name": "label", "type": "int", "doc": "1 or 0."},
        {"name": "labeled_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


EVENT_FIELDS = json.loads((SCHEMAS / "event.avsc").read_text())["fields"]


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


# -- values generated from the schemas -------------------------------------------------


def avro_values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Hypothesis strategy for values valid under a parsed fastavro schema."""
    if isinstance(schema, list):
        return st.one_of([avro_values(branch, named) for branch in schema])
    if isinstance(schema, str):
        primitive = {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "float": st.floats(width=32, allow_nan=False),
            "double": st.floats(allow_nan=False),
            "string": st.text(max_size=12),
            "bytes": st.binary(max_size=12),
        }.get(schema)
        if primitive is not None:
            return primitive
        return st.deferred(lambda: avro_values(named[schema], named))
    kind = schema["type"]
    if kind == "record":
        return st.fixed_dictionaries(
            {field["name"]: avro_values(field["type"], named) for field in schema["fields"]}
        )
    if kind == "array":
        return st.lists(avro_values(schema["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=6), avro_values(schema["values"], named), max_size=3
        )
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    return avro_values(kind, named)  # {"type": "long"} and friends


def values_of(codec: AvroCodec, name: str) -> st.SearchStrategy[Any]:
    named: dict[str, Any] = {}
    parsed = fastavro.parse_schema(codec.parsed(name), named)
    return avro_values(parsed, named)


def avro_body(codec: AvroCodec, name: str, value: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, codec.parsed(name), value)
    return out.getvalue()


def write_schema(directory: Path, file_name: str, schema: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / file_name).write_text(json.dumps(schema), encoding="utf-8")


def label_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An 'old' schemas dir holding Label v1 only, and a 'new' one with v1 in history."""
    old, new = tmp_path / "old", tmp_path / "new"
    write_schema(old, "label.avsc", LABEL_V1)
    write_schema(new, "label.avsc", json.loads((SCHEMAS / "label.avsc").read_text()))
    write_schema(new / "history" / "Label", "v1.avsc", LABEL_V1)
    return old, new


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("name", AvroCodec().schema_names())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_schema_round_trips(codec: AvroCodec, name: str, data: st.DataObject) -> None:
    value = data.draw(values_of(codec, name))
    assert codec._schema(name).conforms(value)  # valid values take the fast path
    encoded = codec.encode(name, value)
    assert codec.decode(encoded, name) == value
    assert codec.writer_schema_name(encoded) == name


def test_loads_every_schema_file(codec: AvroCodec) -> None:
    expected = {json.loads(p.read_text())["name"] for p in SCHEMAS.glob("*.avsc")}
    assert set(codec.schema_names()) == expected
    assert {"Event", "FeatureVector", "Prediction", "Label"} <= expected


def test_full_name_and_nested_named_type(codec: AvroCodec) -> None:
    data = codec.encode("streamml.Event", EVENT)
    decoded = codec.decode(data, "Event")
    assert decoded == EVENT
    assert decoded["payload"]["customer_age_years"] == 41  # the named CardTransaction record


def test_defaults_fill_omitted_fields(codec: AvroCodec) -> None:
    event = {k: v for k, v in EVENT.items() if k not in ("event_type", "produced_at")}
    decoded = codec.decode(codec.encode("Event", event), "Event")
    assert decoded["event_type"] == "card_transaction"
    assert decoded["produced_at"] is None


def test_timestamps_are_int_epoch_millis_both_ways(codec: AvroCodec) -> None:
    decoded = codec.decode(codec.encode("Event", EVENT), "Event")
    assert type(decoded["event_time"]) is int
    assert decoded["event_time"] == EPOCH_MS
    assert type(decoded["produced_at"]) is int
    # The file keeps the logical type for other languages; the codec just never converts it.
    assert codec.definition("Event")["fields"][2]["type"]["logicalType"] == "timestamp-millis"


# -- single-object encoding --------------------------------------------------------------


def rabin_crc64_avro(text: str) -> int:
    """CRC-64-AVRO as the Avro specification writes it ("Schema Fingerprints")."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in text.encode("utf-8"):
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_spec_fingerprint_reference_value() -> None:
    # Test vector of the Avro project (share/test/data/schema-tests.txt): "null".
    assert rabin_crc64_avro('"null"') == 7195948357588979594


@pytest.mark.parametrize("name", AvroCodec().schema_names())
def test_single_object_header_follows_the_spec(codec: AvroCodec, name: str) -> None:
    value = generate_one(codec.parsed(name))
    data = codec.encode(name, value)
    canonical = to_parsing_canonical_form(fastavro.parse_schema(codec.definition(name)))
    spec_fingerprint = rabin_crc64_avro(canonical).to_bytes(8, "little")
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == spec_fingerprint == codec.fingerprint(name)
    assert codec.fingerprint(name) == bytes.fromhex(fastavro_fingerprint(canonical, "CRC-64-AVRO"))
    assert data[10:] == avro_body(codec, name, value)


# -- schema resolution -------------------------------------------------------------------


def test_old_writer_new_reader_gets_the_default(tmp_path: Path) -> None:
    old_dir, new_dir = label_dirs(tmp_path)
    old, new = AvroCodec(old_dir), AvroCodec(new_dir)
    value = {"event_id": "e1", "entity_id": "c1", "label": 1, "labeled_at": EPOCH_MS}
    written = old.encode("Label", value)
    assert written[2:10] != new.fingerprint("Label")  # really another writer schema
    assert new.writer_schema_name(written) == "Label"
    assert new.decode(written, "Label") == {**value, "source": ""}


def test_type_promotion_int_to_long(tmp_path: Path) -> None:
    old_schema = {"type": "record", "name": "Count", "fields": [{"name": "n", "type": "int"}]}
    new_schema = {"type": "record", "name": "Count", "fields": [{"name": "n", "type": "long"}]}
    write_schema(tmp_path / "old", "count.avsc", old_schema)
    write_schema(tmp_path / "new", "count.avsc", new_schema)
    write_schema(tmp_path / "new" / "history" / "Count", "v1.avsc", old_schema)
    data = AvroCodec(tmp_path / "old").encode("Count", {"n": 7})
    assert AvroCodec(tmp_path / "new").decode(data, "Count") == {"n": 7}


def test_writer_not_resolvable_to_reader(tmp_path: Path) -> None:
    old_schema = {"type": "record", "name": "Count", "fields": [{"name": "n", "type": "string"}]}
    new_schema = {"type": "record", "name": "Count", "fields": [{"name": "n", "type": "int"}]}
    write_schema(tmp_path / "old", "count.avsc", old_schema)
    write_schema(tmp_path / "new", "count.avsc", new_schema)
    write_schema(tmp_path / "new" / "history" / "Count", "v1.avsc", old_schema)
    data = AvroCodec(tmp_path / "old").encode("Count", {"n": "seven"})
    with pytest.raises(DecodeError, match=r"cannot be read as .*Count.*type changed"):
        AvroCodec(tmp_path / "new").decode(data, "Count")


def test_bytes_of_another_record_are_a_decode_error(codec: AvroCodec) -> None:
    data = codec.encode("Event", EVENT)
    with pytest.raises(DecodeError, match="written as Event, not Label"):
        codec.decode(data, "Label")


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "unknown magic bytes"),
        (b"garbage that is no avro", "unknown magic bytes"),
        (b"\xc3\x02" + bytes(20), "unknown magic bytes"),
        (b"\xc3\x01\x00", "truncated single-object header"),
        (b"\xc3\x01" + bytes(8) + b"\x02a", "unknown writer schema fingerprint"),
        (b"\x00\x00\x00\x00\x01\x02", "no schema registry is configured"),
    ],
)
def test_bad_bytes_are_decode_errors(codec: AvroCodec, data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as caught:
        codec.decode(data, "Event", topic="events")
    assert caught.value.raw == data
    assert caught.value.topic == "events"
    assert caught.value.stage == "decode"


def test_every_truncation_is_a_decode_error(codec: AvroCodec) -> None:
    data = codec.encode("Event", EVENT)
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:end], "Event")


def test_trailing_bytes_are_a_decode_error(codec: AvroCodec) -> None:
    with pytest.raises(DecodeError, match="trailing bytes"):
        codec.decode(codec.encode("Event", EVENT) + b"\x00", "Event")


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64))
def test_any_body_decodes_or_raises_decode_error(body: bytes) -> None:
    codec = _shared_codec()
    try:
        value = codec.decode(b"\xc3\x01" + codec.fingerprint("Prediction") + body, "Prediction")
    except DecodeError:
        return
    assert isinstance(value, dict)


_CODEC: list[AvroCodec] = []


def _shared_codec() -> AvroCodec:
    if not _CODEC:
        _CODEC.append(AvroCodec())
    return _CODEC[0]


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4) | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from([f["name"] for f in EVENT_FIELDS]), junk=JUNK)
def test_fast_check_is_never_more_lenient_than_fastavro(field: str, junk: Any) -> None:
    codec = _shared_codec()
    value = {**EVENT, field: junk}
    if codec._schema("Event").conforms(value):
        assert fastavro.validation.validate(value, codec.parsed("Event"), raise_errors=False)
    try:
        data = codec.encode("Event", value)
    except EncodeError:
        return
    assert codec.decode(data, "Event")[field] == junk


def test_missing_required_field_is_an_encode_error(codec: AvroCodec) -> None:
    event = {k: v for k, v in EVENT.items() if k != "entity_id"}
    with pytest.raises(EncodeError, match="entity_id"):
        codec.encode("Event", event)


@pytest.mark.parametrize(
    ("field", "value"),
    [("event_time", 1.5), ("event_time", True), ("event_time", 2**64), ("event_id", 5)],
)
def test_wrong_type_is_an_encode_error(codec: AvroCodec, field: str, value: Any) -> None:
    # fastavro alone writes 1.5 as 1 and True as 1: the codec must refuse them.
    with pytest.raises(EncodeError, match=field):
        codec.encode("Event", {**EVENT, field: value})


def test_nested_field_error_names_the_field(codec: AvroCodec) -> None:
    with pytest.raises(EncodeError, match="amount"):
        codec.encode("Event", {**EVENT, "payload": {**EVENT["payload"], "amount": "12"}})


def test_datetime_is_refused_for_timestamp_fields(codec: AvroCodec) -> None:
    with pytest.raises(EncodeError, match="event_time"):
        codec.encode("Event", {**EVENT, "event_time": datetime.now(UTC)})


def test_not_a_mapping_is_an_encode_error(codec: AvroCodec) -> None:
    with pytest.raises(EncodeError, match="mapping"):
        codec.encode("Event", [1, 2])  # type: ignore[arg-type]


def test_unknown_schema_name(codec: AvroCodec) -> None:
    with pytest.raises(SchemaError, match="unknown schema 'Nope'"):
        codec.encode("Nope", {})
    with pytest.raises(SchemaError):
        codec.parsed("other.Event")
    with pytest.raises(SchemaError):  # e.g. writer_schema_name() found nothing
        codec.decode(b"\xc3\x01", None)  # type: ignore[arg-type]


def test_broken_schema_files_are_schema_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.avsc").write_text("{not json", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"broken\.avsc"):
        AvroCodec(tmp_path)
    with pytest.raises(SchemaError, match="does not exist"):
        AvroCodec(tmp_path / "missing")


def test_history_file_must_match_its_directory(tmp_path: Path) -> None:
    _, new_dir = label_dirs(tmp_path)
    write_schema(new_dir / "history" / "Event", "v1.avsc", LABEL_V1)
    with pytest.raises(SchemaError, match="lives in history/Event"):
        AvroCodec(new_dir)


def test_duplicate_record_name_is_refused(tmp_path: Path) -> None:
    write_schema(tmp_path, "a.avsc", LABEL_V1)
    write_schema(tmp_path, "b.avsc", LABEL_V1)
    with pytest.raises(SchemaError, match="also defined"):
        AvroCodec(tmp_path)


# -- schema registry wire format -----------------------------------------------------------


def test_registry_round_trip_and_wire_format() -> None:
    codec = AvroCodec(registry_url="mock://unit")
    data = codec.encode("Event", EVENT, topic="t.events")
    registry = codec._registry  # the MockSchemaRegistryClient behind the mock:// URL
    registered = registry.get_latest_version("t.events-value")
    assert data[0] == 0
    assert int.from_bytes(data[1:5], "big") == registered.schema_id
    assert data[5:] == avro_body(codec, "Event", EVENT)
    assert json.loads(registered.schema.schema_str) == codec.definition("Event")
    assert codec.decode(data, "Event", topic="t.events") == EVENT
    assert codec.writer_schema_name(data) == "Event"
    # Cached: encoding again does not register a new version.
    assert codec.encode("Event", EVENT, topic="t.events") == data
    assert registry.get_versions("t.events-value") == [1]


def test_registry_decode_resolves_an_old_writer(tmp_path: Path) -> None:
    _, new_dir = label_dirs(tmp_path)
    codec = AvroCodec(new_dir, registry_url="mock://unit")
    old_id = codec._registry.register_schema("labels-value", Schema(json.dumps(LABEL_V1), "AVRO"))
    value = {"event_id": "e1", "entity_id": "c1", "label": 0, "labeled_at": EPOCH_MS}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(LABEL_V1), value)
    data = b"\x00" + old_id.to_bytes(4, "big") + out.getvalue()
    assert codec.decode(data, "Label") == {**value, "source": ""}


def test_registry_codec_still_reads_single_object_bytes(codec: AvroCodec) -> None:
    single = codec.encode("Event", EVENT)
    assert AvroCodec(registry_url="mock://unit").decode(single, "Event") == EVENT


def test_registry_unknown_id_and_missing_topic() -> None:
    codec = AvroCodec(registry_url="mock://unit")
    data = codec.encode("Event", EVENT, topic="events")
    unknown = b"\x00" + (999).to_bytes(4, "big") + data[5:]
    with pytest.raises(DecodeError, match="schema id 999 is not in the registry") as caught:
        codec.decode(unknown, "Event", topic="events")
    assert caught.value.raw == unknown
    assert codec.writer_schema_name(unknown) is None
    with pytest.raises(DecodeError, match="truncated schema-registry header"):
        codec.decode(b"\x00\x00", "Event")
    with pytest.raises(EncodeError, match="topic"):
        codec.encode("Event", EVENT)


def test_from_settings_picks_the_wire_format() -> None:
    plain = AvroCodec.from_settings(KafkaSettings(bootstrap_servers="127.0.0.1:9092"))
    assert plain.encode("Event", EVENT)[:2] == b"\xc3\x01"
    registry = AvroCodec.from_settings(
        KafkaSettings(
            bootstrap_servers="127.0.0.1:9092",
            schema_registry_url="mock://settings",
            schema_registry_basic_auth="user:secret",  # type: ignore[arg-type]
        )
    )
    assert registry.encode("Event", EVENT, topic="events")[:1] == b"\x00"


# -- helpers others use -----------------------------------------------------------------


def test_check_compatibility_is_exported() -> None:
    label = json.loads((SCHEMAS / "label.avsc").read_text())
    assert check_compatibility(LABEL_V1, label) == []  # `source` was added with a default
    assert check_compatibility(label, LABEL_V1) == []  # dropping a field is fine for readers
    strict = {**label, "fields": [*label["fields"], {"name": "weight", "type": "double"}]}
    assert check_compatibility(label, strict) == ["Label.weight: field added without a default"]


# -- the compiled writer (one pass: check and write) -------------------------------------


@pytest.mark.parametrize("name", AvroCodec().schema_names())
def test_every_current_schema_has_a_compiled_writer(codec: AvroCodec, name: str) -> None:
    assert codec._schema(name).fast_write is not None


@pytest.mark.parametrize("name", AvroCodec().schema_names())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_writer_writes_fastavros_bytes(
    codec: AvroCodec, name: str, data: st.DataObject
) -> None:
    value = data.draw(values_of(codec, name))
    fast_write = codec._schema(name).fast_write
    assert fast_write is not None
    assert fast_write(value) == avro_body(codec, name, value)
    assert fast_write(value) == avro_body(codec, name, value)  # memoized parts too


def _vector(values: list[Any], names: list[Any] | None = None) -> dict[str, Any]:
    n = len(values)
    return {
        "event_id": "e1",
        "entity_id": "card-1",
        "event_time": EPOCH_MS,
        "computed_at": EPOCH_MS + 5,
        "feature_set": "fs",
        "feature_set_version": "1",
        "feature_set_hash": "ab" * 32,
        "names": [f"f{i}" for i in range(n)] if names is None else names,
        "values": values,
        "categories": {"country": "DE", "channel": "pos"},
    }


@pytest.mark.parametrize(
    "values",
    [
        [0.0, -0.0, 1.5, 1e308, -1e-308, 5e-324],
        [float("nan"), float("inf"), float("-inf")],
        [1, 2**53 + 1, -(2**60), 0.5],  # ints are doubles too (as in fastavro)
        [],
    ],
)
def test_feature_vector_values_bytes_match_fastavro(codec: AvroCodec, values: list[Any]) -> None:
    value = _vector(values)
    data = codec.encode("FeatureVector", value)
    assert data[10:] == avro_body(codec, "FeatureVector", value)
    assert codec.decode(data, "FeatureVector")["values"] == pytest.approx(
        [float(v) for v in values], nan_ok=True
    )


@pytest.mark.parametrize(
    "values",
    [
        [0.0, -0.0, 1.5, 1e308, -1e-308, 5e-324],
        [float("nan"), float("inf"), float("-inf")],
        [],
    ],
)
def test_feature_vector_values_from_a_numpy_row(codec: AvroCodec, values: list[float]) -> None:
    # A row of a batch's float64 matrix (the features service) is written as its memory:
    # the same bytes as the list, and as fastavro writes the list.
    matrix = np.array([values, values], dtype=np.float64).reshape(2, len(values))
    row = codec.encode("FeatureVector", _vector(matrix[1]))
    assert row == codec.encode("FeatureVector", _vector(list(values)))
    assert row[10:] == avro_body(codec, "FeatureVector", _vector(list(values)))


def test_feature_vector_values_numpy_other_dtypes_take_the_slow_path(codec: AvroCodec) -> None:
    # Not a 1-D float64 array: converted to a list and written by fastavro, same bytes.
    for array in (np.arange(3, dtype=np.int64), np.arange(3, dtype=np.float32)):
        data = codec.encode("FeatureVector", _vector(array))
        assert data == codec.encode("FeatureVector", _vector(array.tolist()))
    with pytest.raises(EncodeError, match="values"):
        codec.encode("FeatureVector", _vector(np.array(["a", "b"])))


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ([1.0, True], None),  # bool is not a double for the fast path: fastavro decides
        ([1.0, 2**1100], None),  # too big for a double
        ([1.0, "2.0"], None),
        ((1.0, 2.0), None),  # a tuple
        ([1.0, 2.0], ["a", 5]),
        ([1.0, 2.0], ["a", "\ud800"]),  # a lone surrogate
    ],
)
def test_values_the_compiled_writer_refuses_behave_as_before(
    codec: AvroCodec, values: Any, names: Any
) -> None:
    value = _vector(values, names)
    fast_write = codec._schema("FeatureVector").fast_write
    assert fast_write is not None
    with pytest.raises(Exception):  # any refusal: the value goes the validated fastavro way
        fast_write(value)
    # What the codec did before it had a compiled writer: fastavro validates, then writes.
    try:
        fastavro.validation.validate(value, codec.parsed("FeatureVector"), raise_errors=True)
        expected: bytes | None = avro_body(codec, "FeatureVector", value)
    except Exception:
        expected = None
    if expected is not None:
        assert codec.encode("FeatureVector", value)[10:] == expected
    else:
        with pytest.raises(EncodeError, match="FeatureVector"):
            codec.encode("FeatureVector", value)


def test_repeated_names_are_rewritten_when_they_change(codec: AvroCodec) -> None:
    names = ["a", "b", "c"]
    first = codec.encode("FeatureVector", _vector([1.0, 2.0, 3.0], names))
    names[1] = "bee"  # the same list object, changed in place
    second = codec.encode("FeatureVector", _vector([1.0, 2.0, 3.0], names))
    assert codec.decode(first, "FeatureVector")["names"] == ["a", "b", "c"]
    assert codec.decode(second, "FeatureVector")["names"] == ["a", "bee", "c"]


def test_omitted_field_with_default_is_written_by_fastavro(codec: AvroCodec) -> None:
    value = _vector([1.0])
    del value["categories"]
    data = codec.encode("FeatureVector", value)
    assert codec.decode(data, "FeatureVector")["categories"] == {}


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from([f["name"] for f in EVENT_FIELDS]), junk=JUNK)
def test_compiled_writer_is_never_more_lenient_than_fastavro(field: str, junk: Any) -> None:
    codec = _shared_codec()
    value = {**EVENT, field: junk}
    fast_write = codec._schema("Event").fast_write
    assert fast_write is not None
    try:
        body = fast_write(value)
    except Exception:
        return
    assert fastavro.validation.validate(value, codec.parsed("Event"), raise_errors=False)
    assert body == avro_body(codec, "Event", value)


def test_schemas_the_compiled_writer_leaves_to_fastavro(tmp_path: Path) -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "next", "type": ["null", "Node"], "default": None},
            {"name": "x", "type": ["null", "long", "string"], "default": None},
        ],
    }
    write_schema(tmp_path, "node.avsc", node)
    codec = AvroCodec(tmp_path)
    assert codec._schema("Node").fast_write is None
    value = {"next": {"next": None, "x": "a"}, "x": 3}
    assert codec.decode(codec.encode("Node", value), "Node") == value
    with pytest.raises(EncodeError, match="x"):
        codec.encode("Node", {"next": None, "x": 1.5})


def test_names_as_a_tuple_are_written_like_a_list(codec: AvroCodec) -> None:
    names = ("a", "b", "c")
    as_list = codec.encode("FeatureVector", _vector([1.0, 2.0, 3.0], list(names)))
    for _ in range(2):  # the second time from memory
        assert codec.encode("FeatureVector", _vector([1.0, 2.0, 3.0], names)) == as_list  # type: ignore[arg-type]
    other = ("a", "b", "see")
    decoded = codec.decode(
        codec.encode("FeatureVector", _vector([1.0, 2.0, 3.0], other)), "FeatureVector"
    )  # type: ignore[arg-type]
    assert decoded["names"] == ["a", "b", "see"]
    with pytest.raises(EncodeError, match="names"):
        codec.encode("FeatureVector", _vector([1.0, 2.0], ("a", 2)))  # type: ignore[arg-type]


# -- reader-side projections ---------------------------------------------------------------


def _writer_versions(codec: AvroCodec, name: str) -> list[Any]:
    """The current schema and every historical one of ``name`` (_SchemaVersion objects)."""
    return [codec._schema(name), *codec._history.get(name, [])]


def _single_object(version: Any, value: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, version.parsed, value)
    return b"\xc3\x01" + version.fingerprint + out.getvalue()


def _plain(value: Any) -> Any:
    """``value`` with every NumPy array as the list fastavro returns (to compare with ==)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _assert_arrays_exact(got: Any, expected: Any) -> None:
    """Every NumPy array in ``got`` is a float64 array of its own memory holding the bits of
    the floats at the same place in ``expected`` (what fastavro decoded)."""
    if isinstance(got, np.ndarray):
        assert isinstance(expected, list)
        assert got.dtype == np.float64 and got.ndim == 1 and got.base is None
        assert got.tobytes() == np.array(expected, dtype=np.float64).tobytes()
    elif isinstance(got, dict):
        for key, value in got.items():
            _assert_arrays_exact(value, expected[key])
    elif isinstance(got, list):
        for item, other in zip(got, expected, strict=True):
            _assert_arrays_exact(item, other)


def _projection_cases() -> list[tuple[str, str]]:
    codec = AvroCodec()
    return [
        (name, str(field["name"]))
        for name in codec.schema_names()
        for field in codec.definition(name)["fields"]
    ]


@pytest.mark.parametrize(("name", "field"), _projection_cases())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_projection_equals_full_decode_minus_the_dropped_field(
    codec: AvroCodec, name: str, field: str, data: st.DataObject
) -> None:
    projection = f"{name}[-{field}]"
    for version in _writer_versions(codec, name):
        named: dict[str, Any] = {}
        parsed = fastavro.parse_schema(version.parsed, named)
        values = data.draw(st.lists(avro_values(parsed, named), min_size=1, max_size=3))
        # Each value twice and the list twice: a repeated skipped field takes the memo.
        for value in [*values, *values, values[0]]:
            encoded = _single_object(version, value)
            full = codec.decode(encoded, name)
            expected = {k: v for k, v in full.items() if k != field}
            got = codec.decode(encoded, projection)
            assert _plain(got) == expected
            assert list(got) == list(expected)  # same field order too
            _assert_arrays_exact(got, expected)


_NAMES = st.lists(st.sampled_from(["a", "b", "ab", "é", "amount", ""]), max_size=5)


@settings(max_examples=200, deadline=None)
@given(names=st.lists(_NAMES, min_size=1, max_size=6), values=st.lists(st.floats(), max_size=6))
def test_skipped_names_memo_never_changes_other_fields(
    codec: AvroCodec, names: list[list[str]], values: list[float]
) -> None:
    # Names that share prefixes and repeat: the skip memo must never be fooled.
    for i, feature_names in enumerate(names):
        vector = {
            "event_id": f"e{i}",
            "entity_id": "c1",
            "event_time": i,
            "computed_at": i + 1,
            "feature_set": "demo",
            "feature_set_version": "3",
            "feature_set_hash": "ab" * 32,
            "names": feature_names,
            "values": values,
            "categories": {"country": "DE"} if i % 2 else {},
        }
        encoded = codec.encode("FeatureVector", vector)
        got = codec.decode(encoded, "FeatureVector[-names]")
        expected = {k: v for k, v in codec.decode(encoded, "FeatureVector").items()}
        del expected["names"]
        assert repr(_plain(got)) == repr(expected)  # repr: NaN and -0.0 compare exactly
        _assert_arrays_exact(got, expected)


def _fv(values: list[float], categories: dict[str, str], i: int = 0) -> dict[str, Any]:
    return {
        "event_id": f"e{i}",
        "entity_id": "c1",
        "event_time": EPOCH_MS + i,
        "computed_at": EPOCH_MS + i + 1,
        "feature_set": "demo",
        "feature_set_version": "3",
        "feature_set_hash": "ab" * 32,
        "names": [f"f{j}" for j in range(len(values))],
        "values": values,
        "categories": categories,
    }


def test_projection_reads_doubles_as_a_float64_array_of_its_own(codec: AvroCodec) -> None:
    values = [1.5, -0.0, float("nan"), float("inf"), -float("inf"), 5e-324, 1e308, 0.1]
    encoded = codec.encode("FeatureVector", _fv(values, {"country": "DE"}))
    got = codec.decode(encoded, "FeatureVector[-names]")["values"]
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.base is None
    assert got.tobytes() == np.array(values, dtype=np.float64).tobytes()  # NaN, -0.0 too
    got[:] = 7.0  # the caller's to change: the next read of the same bytes is unaffected
    again = codec.decode(encoded, "FeatureVector[-names]")["values"]
    assert again.tobytes() == np.array(values, dtype=np.float64).tobytes()
    empty = codec.decode(codec.encode("FeatureVector", _fv([], {})), "FeatureVector[-names]")
    assert empty["values"].dtype == np.float64 and empty["values"].shape == (0,)


def test_projection_reads_number_arrays_in_blocks_like_fastavro(tmp_path: Path) -> None:
    # Arrays written in several blocks, some with a negative count and a byte size (the
    # Avro spec allows both; fastavro's writer never makes them), of doubles and floats.
    (tmp_path / "reading.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "Reading",
                "fields": [
                    {"name": "skipped", "type": "string"},
                    {"name": "doubles", "type": {"type": "array", "items": "double"}},
                    {"name": "floats", "type": {"type": "array", "items": "float"}},
                ],
            }
        )
    )
    codec = AvroCodec(tmp_path)
    doubles, floats = [0.5, -2.25, 1e-300, float("nan")], [0.1, -3.5, 7.0]
    body = (
        b"\x04ab"
        + b"\x03\x20" + np.array(doubles[:2], "<f8").tobytes()  # count -2, 16 bytes
        + b"\x02" + np.array(doubles[2:3], "<f8").tobytes()
        + b"\x01\x10" + np.array(doubles[3:], "<f8").tobytes()  # count -1, 8 bytes
        + b"\x00"
        + b"\x04" + np.array(floats[:2], "<f4").tobytes()
        + b"\x02" + np.array(floats[2:], "<f4").tobytes()
        + b"\x00"
    )  # fmt: skip
    encoded = b"\xc3\x01" + codec._schema("Reading").fingerprint + body
    full = codec.decode(encoded, "Reading")
    got = codec.decode(encoded, "Reading[-skipped]")
    assert list(got) == ["doubles", "floats"]
    _assert_arrays_exact(got, {k: v for k, v in full.items() if k != "skipped"})
    assert isinstance(got["floats"], np.ndarray)  # float32 on the wire, exact as float64
    for end in range(len(encoded)):  # every truncation is still an error
        with pytest.raises(DecodeError):
            codec.decode(encoded[:end], "Reading[-skipped]")


_CATEGORY_TEXT = st.sampled_from(["DE", "pos", "5411", "é", "", "x" * 63, "y" * 64, "ü" * 40])


@settings(max_examples=200, deadline=None)
@given(
    maps=st.lists(
        st.dictionaries(_CATEGORY_TEXT, _CATEGORY_TEXT, max_size=4), min_size=1, max_size=8
    )
)
def test_remembered_string_maps_equal_the_full_decode(
    codec: AvroCodec, maps: list[dict[str, str]]
) -> None:
    # Maps that repeat, share prefixes and hold strings of 63/64+ bytes (one- and two-byte
    # lengths): a map read from memory must equal its decode, and be the caller's own dict.
    for i, categories in enumerate([*maps, *maps]):
        encoded = codec.encode("FeatureVector", _fv([1.0], categories, i))
        got = codec.decode(encoded, "FeatureVector[-names]")
        assert got["categories"] == codec.decode(encoded, "FeatureVector")["categories"]
        assert list(got["categories"]) == list(categories)
        got["categories"]["mutated"] = "yes"
        assert "mutated" not in codec.decode(encoded, "FeatureVector[-names]")["categories"]


def test_remembered_string_maps_are_forgotten_when_full(
    codec: AvroCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamml.codec.reader  # where the projection reader's memo size lives

    monkeypatch.setattr(streamml.codec.reader, "_MAP_MEMO_SIZE", 3)
    projection = "FeatureVector[-names,-event_id]"  # a reader built with the small memo
    for round_ in range(3):
        for i in range(10):
            categories = {"country": f"C{i}", "channel": "pos" if i % 2 else "web"}
            encoded = codec.encode("FeatureVector", _fv([float(i)], categories, i))
            assert codec.decode(encoded, projection)["categories"] == categories, round_


def test_projection_of_several_fields_and_full_name(codec: AvroCodec) -> None:
    encoded = codec.encode("streamml.Event", EVENT)
    got = codec.decode(encoded, "streamml.Event[-payload, -event_id]")
    assert got == {k: v for k, v in EVENT.items() if k not in ("payload", "event_id")}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("FeatureVector[-nope]", "has no field nope"),
        ("FeatureVector[-names,-nope]", "has no field nope"),
        ("FeatureVector[names]", "expected <Record>"),
        ("FeatureVector[]", "expected <Record>"),
        ("FeatureVector[-]", "expected <Record>"),
        ("Nope[-names]", "unknown schema"),
    ],
)
def test_bad_projection_is_a_schema_error(codec: AvroCodec, name: str, message: str) -> None:
    encoded = codec.encode(
        "Label", {"event_id": "e", "entity_id": "c", "label": 1, "labeled_at": 1}
    )
    with pytest.raises(SchemaError, match=message):
        codec.decode(encoded, name)


def test_projection_is_not_an_encode_schema(codec: AvroCodec) -> None:
    with pytest.raises(SchemaError, match="unknown schema"):
        codec.encode("Label[-label]", {"event_id": "e", "entity_id": "c", "labeled_at": 1})


def test_projection_is_built_once(codec: AvroCodec) -> None:
    encoded = codec.encode(
        "Label", {"event_id": "e", "entity_id": "c", "label": 1, "labeled_at": 1}
    )
    codec.decode(encoded, "Label[-label]")
    built = codec._projections["Label[-label]"]
    codec.decode(encoded, "Label[-label]")
    assert codec._projections["Label[-label]"] is built


def test_projection_bad_bytes_are_decode_errors(codec: AvroCodec) -> None:
    vector = {
        "event_id": "e1",
        "entity_id": "c1",
        "event_time": 1,
        "computed_at": 2,
        "feature_set": "demo",
        "feature_set_version": "3",
        "feature_set_hash": "ab",
        "names": ["a", "b"],
        "values": [1.0, 2.0],
        "categories": {"k": "v"},
    }
    encoded = codec.encode("FeatureVector", vector)
    codec.decode(encoded, "FeatureVector[-names]")  # the memo now holds these names
    for end in range(len(encoded)):
        with pytest.raises(DecodeError):
            codec.decode(encoded[:end], "FeatureVector[-names]")
    with pytest.raises(DecodeError, match="trailing"):
        codec.decode(encoded + b"\x00", "FeatureVector[-names]")
    label = codec.encode("Label", {"event_id": "e", "entity_id": "c", "label": 1, "labeled_at": 1})
    with pytest.raises(DecodeError, match="not FeatureVector"):
        codec.decode(label, "FeatureVector[-names]")


def test_projection_reads_a_non_bytes_buffer_like_bytes(codec: AvroCodec) -> None:
    encoded = codec.encode(
        "Label", {"event_id": "e", "entity_id": "c", "label": 1, "labeled_at": 1}
    )
    assert codec.decode(bytearray(encoded), "Label[-entity_id]") == codec.decode(
        encoded, "Label[-entity_id]"
    )


@settings(max_examples=500, deadline=None)
@given(
    st.integers(-(2**63), 2**63 - 1)
    | st.integers(-20_000, 20_000)
    | st.integers(1_600_000_000_000, 1_900_000_000_000)
)
def test_long_varint_equals_fastavro(value: int) -> None:
    # The compiled writer's varint (small values computed, large ones from a table of the
    # low 14 bits plus a remembered tail) must write what fastavro writes.
    from streamml.codec import _zigzag

    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", value)
    assert _zigzag(value) == out.getvalue()
    assert _zigzag(value) == out.getvalue()  # and again, from the remembered tail


def test_repeated_string_maps_write_the_same_bytes_and_bad_ones_still_fail(
    codec: AvroCodec,
) -> None:
    first = codec.encode("FeatureVector", _vector([1.0]))
    again = _vector([1.0])
    again["categories"] = dict(again["categories"])  # an equal map, another object
    assert codec.encode("FeatureVector", again) == first
    assert first[10:] == avro_body(codec, "FeatureVector", _vector([1.0]))
    for bad in ({"country": ["DE"]}, {"country": 5}, {"country": None}):
        value = _vector([1.0])
        value["categories"] = bad
        with pytest.raises(EncodeError, match="categories"):
            codec.encode("FeatureVector", value)
