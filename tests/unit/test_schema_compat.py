"""Schema evolution gate: every schema in schemas/ must read data written by its history.

How to change a schema (other services keep running with the old one for a while):

1. Edit ``schemas/<name>.avsc``. Backward compatible means the new schema can read what
   the old one wrote: add fields only with a ``default``; remove fields freely; widen
   types only along Avro's promotions (int -> long -> float -> double, string <-> bytes);
   make a field optional as ``["null", T]`` with ``"default": null``; never rename a
   record or field without an ``aliases`` entry.
2. Copy the edited file to ``schemas/history/<RecordName>/v<N+1>.avsc`` (N = the highest
   version there) and commit both. The codec then also recognises bytes written with any
   earlier version (their fingerprints) and resolves them to the current schema.
3. Run ``pytest tests/unit/test_schema_compat.py``. It fails when the current schema cannot
   read one of the committed versions, and when a non-doc change was made without step 2.

``check_compatibility`` (in ``streamml.codec``) is the check: the Avro resolution rules on
the structure, plus a real write-with-old / read-with-new round trip of sample records.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from streamml.codec import AvroCodec, check_compatibility, default_schemas_dir
from streamml.codec import compat as codec_module

SCHEMAS = default_schemas_dir()


def without_docs(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: without_docs(v) for k, v in schema.items() if k != "doc"}
    if isinstance(schema, list):
        return [without_docs(item) for item in schema]
    return schema


def evolution_problems(schemas_dir: Path) -> list[str]:
    """Everything wrong with the schema history in ``schemas_dir`` (empty = fine)."""
    codec = AvroCodec(schemas_dir)
    problems: list[str] = []
    history_dir = schemas_dir / "history"
    known = set(codec.schema_names())
    for stray in (
        sorted(p.name for p in history_dir.iterdir() if p.is_dir())
        if (history_dir.is_dir())
        else []
    ):
        if stray not in known:
            problems.append(f"history/{stray} has no current schema in {schemas_dir}")
    for name in codec.schema_names():
        current = codec.definition(name)
        versions = codec.history(name)
        if not versions:
            # A brand-new schema: nothing can have been written with an older version yet.
            warnings.warn(
                f"{name} has no history yet; copy it to history/{name}/v1.avsc once it is "
                "committed, so later changes are checked against it",
                stacklevel=2,
            )
            continue
        for number, old in enumerate(versions, start=1):
            problems.extend(
                f"{name}: cannot read data written with v{number}: {problem}"
                for problem in check_compatibility(old, current)
            )
        if without_docs(versions[-1]) != without_docs(current):
            problems.append(
                f"{name}: changed since v{len(versions)}; copy it to "
                f"history/{name}/v{len(versions) + 1}.avsc"
            )
    return problems


def test_current_schemas_read_every_committed_version() -> None:
    assert evolution_problems(SCHEMAS) == []


def test_every_schema_and_field_has_a_doc() -> None:
    def undocumented(schema: Any, path: str) -> list[str]:
        missing = [] if schema.get("doc") else [path]
        for field in schema.get("fields", []):
            where = f"{path}.{field['name']}"
            if not field.get("doc"):
                missing.append(where)
            kind = field["type"]
            for branch in kind if isinstance(kind, list) else [kind]:
                if isinstance(branch, dict) and branch.get("type") == "record":
                    missing.extend(undocumented(branch, where))
        return missing

    for path in sorted(SCHEMAS.glob("*.avsc")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        assert undocumented(schema, schema["name"]) == [], path.name


# -- the gate can fail ---------------------------------------------------------------------


def copy_schemas(tmp_path: Path) -> Path:
    """A schemas dir with only Event (current + history) in it."""
    target = tmp_path / "schemas"
    (target / "history" / "Event").mkdir(parents=True)
    for source in [SCHEMAS / "event.avsc", *(SCHEMAS / "history" / "Event").glob("*.avsc")]:
        (target / source.relative_to(SCHEMAS)).write_text(source.read_text(encoding="utf-8"))
    return target


def edit_event(schemas_dir: Path, change: Any, *, record_version: bool) -> None:
    event = json.loads((schemas_dir / "event.avsc").read_text(encoding="utf-8"))
    change(event)
    text = json.dumps(event, indent=2)
    (schemas_dir / "event.avsc").write_text(text, encoding="utf-8")
    if record_version:
        (schemas_dir / "history" / "Event" / "v2.avsc").write_text(text, encoding="utf-8")


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def add_required_field(event: dict[str, Any]) -> None:
    event["fields"].append({"name": "risk_tier", "type": "string", "doc": "Tier."})


def change_amount_to_string(event: dict[str, Any]) -> None:
    field(field(event, "payload")["type"], "amount")["type"] = "string"


def narrow_event_time_to_int(event: dict[str, Any]) -> None:
    field(event, "event_time")["type"] = "int"


def make_optional_field_required(event: dict[str, Any]) -> None:
    produced = field(event, "produced_at")
    produced["type"] = "long"
    del produced["default"]


def rename_record(event: dict[str, Any]) -> None:
    field(event, "payload")["type"]["name"] = "CardPayment"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (add_required_field, "Event.risk_tier: field added without a default"),
        (change_amount_to_string, "Event.payload.amount: type changed from double to string"),
        (narrow_event_time_to_int, "Event.event_time: type changed from long to int"),
        (make_optional_field_required, "Event.produced_at: type changed from null to long"),
        (rename_record, "record streamml.CardTransaction renamed"),
    ],
)
def test_incompatible_change_is_detected(tmp_path: Path, change: Any, expected: str) -> None:
    schemas_dir = copy_schemas(tmp_path)
    edit_event(schemas_dir, change, record_version=True)
    problems = evolution_problems(schemas_dir)
    assert any(expected in problem for problem in problems), problems
    assert all(
        problem.startswith("Event: cannot read data written with v1") for problem in problems
    )


def add_optional_field(event: dict[str, Any]) -> None:
    event["fields"].append(
        {"name": "risk_tier", "type": ["null", "string"], "default": None, "doc": "Tier."}
    )


def widen_customer_age(event: dict[str, Any]) -> None:
    field(field(event, "payload")["type"], "customer_age_years")["type"] = ["null", "long"]


def drop_produced_at(event: dict[str, Any]) -> None:
    event["fields"] = [f for f in event["fields"] if f["name"] != "produced_at"]


def rename_with_alias(event: dict[str, Any]) -> None:
    record = field(event, "payload")["type"]
    record["aliases"] = [record["name"]]
    record["name"] = "CardPayment"


@pytest.mark.parametrize(
    "change", [add_optional_field, widen_customer_age, drop_produced_at, rename_with_alias]
)
def test_compatible_change_passes(tmp_path: Path, change: Any) -> None:
    schemas_dir = copy_schemas(tmp_path)
    edit_event(schemas_dir, change, record_version=True)
    assert evolution_problems(schemas_dir) == []


def test_change_without_a_new_history_version_is_flagged(tmp_path: Path) -> None:
    schemas_dir = copy_schemas(tmp_path)
    edit_event(schemas_dir, add_optional_field, record_version=False)
    assert evolution_problems(schemas_dir) == [
        "Event: changed since v1; copy it to history/Event/v2.avsc"
    ]


def test_doc_only_change_needs_no_new_version(tmp_path: Path) -> None:
    schemas_dir = copy_schemas(tmp_path)

    def reword(event: dict[str, Any]) -> None:
        field(event, "event_id")["doc"] = "Reworded."

    edit_event(schemas_dir, reword, record_version=False)
    assert evolution_problems(schemas_dir) == []


def test_sampled_round_trip_fails_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the structural rules switched off, the write-old/read-new samples still fail."""
    old = json.loads((SCHEMAS / "event.avsc").read_text(encoding="utf-8"))
    new = copy.deepcopy(old)
    add_required_field(new)
    monkeypatch.setattr(codec_module, "_structural_problems", lambda writer, reader: [])
    problems = check_compatibility(old, new)
    assert len(problems) == 1
    assert "a record written with the old schema cannot be read" in problems[0]


def test_enum_symbol_removal() -> None:
    def colour(symbols: list[str], **extra: Any) -> dict[str, Any]:
        enum = {"type": "enum", "name": "Colour", "symbols": symbols, **extra}
        return {"type": "record", "name": "Paint", "fields": [{"name": "c", "type": enum}]}

    assert check_compatibility(colour(["RED", "BLUE"]), colour(["RED", "BLUE", "GREEN"])) == []
    assert check_compatibility(colour(["RED", "BLUE"]), colour(["RED"])) == [
        "Paint.c: enum symbols removed without a default: ['BLUE']"
    ]
    assert check_compatibility(colour(["RED", "BLUE"]), colour(["RED"], default="RED")) == []


def test_union_without_a_matching_branch() -> None:
    def record(kind: Any) -> dict[str, Any]:
        return {"type": "record", "name": "R", "fields": [{"name": "n", "type": kind}]}

    assert check_compatibility(record("long"), record(["null", "int"])) == [
        "R.n: no branch of [null, int] can read long"
    ]
    assert check_compatibility(record("int"), record(["null", "long"])) == []
