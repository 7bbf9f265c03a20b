"""The scorer reading its input without names (FeatureVector[-names]) scores exactly as with
them: the rules route takes names from a model of the vector's feature set, else from a
full decode of the record's bytes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from services.scorer.processor import (
    NAMELESS_VECTOR,
    VECTOR_SCHEMA,
    ScorerProcessor,
    ScoringPolicy,
    names_decoder,
)
from services.scorer.registry import ModelRegistry
from services.scorer.routing import ModelRoutes, RouteEntry, RouteTable
from services.scorer.rules import RulesScorer
from services.scorer.settings import ScorerSettings
from streamml.codec import AvroCodec
from streamml.processor import Record
from streamml.state import State
from tests.unit.scorer import modelkit

CODEC = AvroCodec()


@pytest.fixture
def registry(keys, model_dir, public_key) -> ModelRegistry:  # type: ignore[no-untyped-def]
    key = keys[0]
    modelkit.publish(model_dir, key, "good", "1", modelkit.logistic_model([0.8, -0.5, 0.3, 0.1]))
    modelkit.publish(model_dir, key, "raises", "1", modelkit.raising_model())
    modelkit.publish(model_dir, key, "nan", "1", modelkit.nan_model())
    return ModelRegistry(model_dir, public_key, warmup_rows=2)


def _plain(value: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded vector with its values as a list (the projection reads a NumPy array)."""
    values = value.get("values")
    return {**value, "values": values.tolist() if isinstance(values, np.ndarray) else values}


def _as_on_the_topic(record: Record, schema: str) -> Record:
    """``record`` encoded as a FeatureVector and decoded as ``schema``, like the runtime."""
    raw = CODEC.encode(VECTOR_SCHEMA, dict(record.value))
    value = CODEC.decode(raw, schema, topic=record.topic)
    return dataclasses.replace(record, value=value, schema=schema, raw_value=raw)


def _outputs(table: RouteTable, records: list[Record], names_of: Any) -> list[Any]:
    proc = ScorerProcessor(
        ModelRoutes(table),
        predictions_topic="predictions",
        shadow_topic="predictions.shadow",
        control_topic="model.control",
        rules=RulesScorer.from_config(["f0>1:0.9", "f3<-1:0.7"], default_score=0.1),
        policy=ScoringPolicy(latency_budget_ms=10_000),
        clock=lambda: 1_800_000_000_000,
        monotonic=lambda: 1000.0,  # model time 0: outputs compare exactly
        names_of=names_of,
    )
    result = proc.process(records, State([]))
    return [(o.topic, o.key, o.value) for o in result.outputs] + [
        (r.reason, r.record.offset) for r in result.rejections
    ]


@pytest.mark.parametrize("tables", ["empty", "models_fail", "good", "other_feature_set"])
def test_projection_scores_exactly_like_the_full_vector(registry, tables: str) -> None:
    table = {
        "empty": RouteTable,
        "models_fail": lambda: RouteTable(
            primary=RouteEntry(registry.load("raises", "1"), -1),
            fallback=RouteEntry(registry.load("nan", "1"), -1),
        ),
        "good": lambda: RouteTable(primary=RouteEntry(registry.load("good", "1"), -1)),
        "other_feature_set": lambda: RouteTable(
            primary=RouteEntry(registry.load("raises", "1"), -1)
        ),
    }[tables]()
    fs_hash = modelkit.OTHER_HASH if tables == "other_feature_set" else modelkit.FS_HASH
    records = [
        *modelkit.batch(6, seed=3, names=modelkit.NAMES, fs_hash=fs_hash),
        modelkit.vector_record(50, [5.0, 0, 0, -5.0], names=modelkit.NAMES, fs_hash=fs_hash),
        modelkit.vector_record(51, [5.0, 0, 0, -5.0], fs_hash=fs_hash),  # written without names
    ]
    full = [_as_on_the_topic(r, VECTOR_SCHEMA) for r in records]
    nameless = [_as_on_the_topic(r, NAMELESS_VECTOR) for r in records]
    assert all("names" not in r.value for r in nameless)
    expected = _outputs(table, full, None)
    assert _outputs(table, nameless, names_decoder(CODEC)) == expected
    if tables in ("empty", "other_feature_set"):
        # No model knows the feature set: the rules needed the decoded names.
        scores = [v["score"] for _, _, v in expected[-2:]]
        assert scores == [0.9, 0.1]  # the vector written without names matches no rule


def test_names_decoder_without_bytes_or_with_bad_names() -> None:
    names_of = names_decoder(CODEC)
    record = modelkit.vector_record(1, [1.0, 2.0, 3.0, 4.0], names=modelkit.NAMES)
    assert names_of(record) == []  # no raw bytes
    good = _as_on_the_topic(record, NAMELESS_VECTOR)
    assert names_of(good) == modelkit.NAMES
    # Bad UTF-8 inside the names: the projection skips it, the full decode refuses it.
    assert good.raw_value is not None
    broken = good.raw_value.replace(b"f0", b"\xff0", 1)
    assert _plain(CODEC.decode(broken, NAMELESS_VECTOR)) == _plain(good.value)
    assert names_of(dataclasses.replace(good, raw_value=broken)) == []


def test_the_service_reads_without_names_unless_asked() -> None:
    assert ScorerSettings.model_fields["check_names"].default is False


@pytest.mark.parametrize("tables", ["empty", "good", "other_feature_set"])
def test_values_as_numpy_arrays_score_exactly_like_lists(registry, tables: str) -> None:
    # The projection reads values as float64 arrays, fastavro (full decode, or a fallback)
    # as lists: every output and rejection is the same either way, invalid vectors included.
    table = {
        "empty": RouteTable,
        "good": lambda: RouteTable(
            primary=RouteEntry(registry.load("good", "1"), -1),
            shadow=RouteEntry(registry.load("good", "1"), -1),
        ),
        "other_feature_set": lambda: RouteTable(primary=RouteEntry(registry.load("good", "1"), -1)),
    }[tables]()
    fs_hash = modelkit.OTHER_HASH if tables == "other_feature_set" else modelkit.FS_HASH
    lists = [
        *modelkit.batch(6, seed=5, names=modelkit.NAMES, fs_hash=fs_hash),
        modelkit.vector_record(50, [5.0, 0, 0, -5.0], names=modelkit.NAMES, fs_hash=fs_hash),
        modelkit.vector_record(51, [1.0, math.nan, 0.0, 0.0], fs_hash=fs_hash),
        modelkit.vector_record(52, [1e300, 0.0, 0.0, 0.0], fs_hash=fs_hash),
        modelkit.vector_record(53, [], fs_hash=fs_hash),
        modelkit.vector_record(54, [1.0, 2.0], fs_hash=fs_hash),
        modelkit.vector_record(55, [1.0, 2.0, 3.0, 4.0], names=["f1", "f0", "f2", "f3"]),
    ]
    arrays = [
        dataclasses.replace(
            r, value={**r.value, "values": np.array(r.value["values"], dtype=np.float64)}
        )
        for r in lists
    ]
    expected = _outputs(table, lists, None)
    assert _outputs(table, arrays, None) == expected
    rejected = {reason for reason, _ in (e for e in expected if len(e) == 2)}
    if tables == "good":  # with a model of the feature set, every check runs
        assert rejected == {
            "validation.non_finite", "validation.empty", "validation.length", "validation.names"
        }  # fmt: skip
