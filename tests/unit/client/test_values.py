"""The typed value classes are generated from schemas/ and cannot drift from them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from fastavro.utils import generate_many

from streamml.client import VALUE_TYPES, ValueDeserializer
from streamml.client import values as values_module
from streamml.client.generate import generate
from streamml.codec import AvroCodec
from streamml.errors import DecodeError

CODEC = AvroCodec()


def _formatted(text: str) -> str:
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run(
        [str(ruff), "format", "--stdin-filename", "values.py", "-"],
        input=text, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


def test_committed_values_equal_what_the_schemas_generate() -> None:
    committed = Path(values_module.__file__).read_text(encoding="utf-8")
    assert committed == _formatted(generate()), (
        "streamml/client/values.py is stale: run python -m streamml.client.generate"
    )


def test_a_changed_schema_changes_the_generated_classes(tmp_path: Path) -> None:
    # The drift check can fail: a field added to a copy of schemas/ shows in the output.
    import json
    import shutil

    schemas = tmp_path / "schemas"
    shutil.copytree(CODEC_DIR, schemas)
    prediction = json.loads((schemas / "prediction.avsc").read_text())
    prediction["fields"].append({"name": "reviewer", "type": "string", "default": ""})
    (schemas / "prediction.avsc").write_text(json.dumps(prediction))
    shutil.rmtree(schemas / "history", ignore_errors=True)
    changed = generate(AvroCodec(schemas))
    assert '    reviewer: str = ""' in changed
    assert changed != generate()


def test_every_schema_has_a_class_with_its_fields() -> None:
    assert sorted(VALUE_TYPES) == CODEC.schema_names()
    for name, cls in VALUE_TYPES.items():
        fields = [f.name.rstrip("_") for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        assert fields == [f["name"] for f in CODEC.definition(name)["fields"]], name
        assert cls.schema_name() == name


@pytest.mark.parametrize("name", sorted(VALUE_TYPES))
def test_round_trip_of_generated_records(name: str) -> None:
    cls = VALUE_TYPES[name]
    decode = ValueDeserializer(cls, CODEC)
    for record in generate_many(CODEC.parsed(name), 50):
        data = CODEC.encode(name, record)
        typed = decode(data)
        assert isinstance(typed, cls)
        assert typed.to_avro() == CODEC.decode(data, name)
        assert CODEC.encode(name, typed.to_avro()) == data


def test_wrong_schema_is_a_decode_error_with_the_bytes() -> None:
    from streamml.client import DriftAlert

    data = CODEC.encode("Label", {"event_id": "e", "entity_id": "c", "label": 1, "labeled_at": 1})
    with pytest.raises(DecodeError, match="not DriftAlert") as caught:
        ValueDeserializer(DriftAlert, CODEC)(data, "t.drift.alerts")
    assert caught.value.raw == data and caught.value.topic == "t.drift.alerts"


CODEC_DIR = Path(__file__).resolve().parents[3] / "schemas"
