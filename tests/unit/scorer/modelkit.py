"""Small real ONNX models and signed version directories for the scorer tests.

Models are built with ``onnx.helper`` (or trained with scikit-learn) and run by the real
onnxruntime: a logistic model that behaves, one that raises at run time, one that returns
NaN, one that is slow (a chain of large matrix products).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from services.scorer.artifact import write_version
from services.scorer.metadata import ModelMetadata, ReferenceDistributions, numeric_reference
from streamml.processor import Record

FS_HASH = "a" * 64
OTHER_HASH = "b" * 64
N_FEATURES = 4
NAMES = [f"f{i}" for i in range(N_FEATURES)]


def _graph(
    nodes: list[Any], initializers: list[Any], n_features: int, out_shape: list[Any]
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, out_shape)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def logistic_model(weights: list[float], bias: float = 0.0) -> bytes:
    """sigmoid(x @ w + b), output [n, 1]."""
    w = numpy_helper.from_array(np.array(weights, dtype=np.float32).reshape(-1, 1), "w")
    b = numpy_helper.from_array(np.array([bias], dtype=np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probabilities"]),
    ]
    return _graph(nodes, [w, b], len(weights), [None, 1])


def raising_model(n_features: int = N_FEATURES) -> bytes:
    """Looks up row ``int(x[:, 0])`` of a 2-row table: fine for 0/1, raises for x0 >= 2.

    It passes the warm-up (zeros), then raises on real batches with a large first feature.
    """
    table = numpy_helper.from_array(np.array([[0.25], [0.75]], dtype=np.float32), "table")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    nodes = [
        helper.make_node("Gather", ["features", "zero"], ["first"], axis=1),
        helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["probabilities"], axis=0),
    ]
    return _graph(nodes, [table, zero], n_features, [None, 1])


def unrunnable_model(n_features: int = N_FEATURES) -> bytes:
    """Reshapes the batch to exactly 7 values: raises for every batch, warm-up included."""
    shape = numpy_helper.from_array(np.array([7, 1], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("ReduceSum", ["features"], ["s"], keepdims=1, noop_with_empty_axes=0),
        helper.make_node("Reshape", ["features", "shape"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["probabilities"]),
    ]
    return _graph(nodes, [shape], n_features, [None, 1])


def nan_model(n_features: int = N_FEATURES) -> bytes:
    """x[:, :1] * NaN: a score per row, all NaN."""
    nan = numpy_helper.from_array(np.full((n_features, 1), np.nan, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["features", "w"], ["probabilities"])]
    return _graph(nodes, [nan], n_features, [None, 1])


def slow_model(n_features: int = N_FEATURES, width: int = 1024, depth: int = 12) -> bytes:
    """Scores like a constant 0.5 after ``depth`` [n, width] x [width, width] products."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(n_features, width)).astype(np.float32), "w_in"),
        numpy_helper.from_array(
            (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32), "w_mid"
        ),
        numpy_helper.from_array(np.zeros((width, 1), dtype=np.float32), "w_out"),
    ]
    nodes = [helper.make_node("MatMul", ["features", "w_in"], ["h0"])]
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w_mid"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{depth}", "w_out"], ["z"]))
    nodes.append(helper.make_node("Sigmoid", ["z"], ["probabilities"]))
    return _graph(nodes, inits, n_features, [None, 1])


def metadata(
    name: str,
    version: str,
    *,
    fs_hash: str = FS_HASH,
    names: list[str] | None = None,
    threshold: float = 0.5,
    reference: ReferenceDistributions | None = None,
) -> ModelMetadata:
    return ModelMetadata(
        model_name=name,
        model_version=version,
        created_at=dt.datetime(2026, 11, 22, tzinfo=dt.UTC).isoformat(),
        algorithm="test",
        feature_set="test-features",
        feature_set_version="1",
        feature_set_hash=fs_hash,
        input_names=names or NAMES,
        threshold=threshold,
        reference=reference,
    )


def tiny_reference(names: list[str] | None = None) -> ReferenceDistributions:
    rng = np.random.default_rng(1)
    cols = names or NAMES
    return ReferenceDistributions(
        features={
            n: numeric_reference(rng.normal(size=200).tolist(), sample_size=50) for n in cols
        },
        score=numeric_reference(rng.uniform(size=200).tolist(), sample_size=50),
        categories={"country": {"DE": 0.7, "FR": 0.3}},
        rows=200,
    )


def publish(
    model_dir: Path,
    key: Ed25519PrivateKey,
    name: str,
    version: str,
    model_bytes: bytes,
    **meta: Any,
) -> Path:
    """Write and sign one version directory."""
    return write_version(model_dir, model_bytes, metadata(name, version, **meta), key)


def vector_record(
    i: int,
    values: list[float],
    *,
    entity: str | None = None,
    fs_hash: str = FS_HASH,
    names: list[str] | None = None,
    offset: int | None = None,
) -> Record:
    """A decoded FeatureVector record as the runtime hands it to the processor."""
    entity_id = entity or f"card-{i % 97}"
    value = {
        "event_id": f"ev-{i}",
        "entity_id": entity_id,
        "event_time": 1_793_491_200_000 + i * 1000,
        "computed_at": 1_793_491_200_000 + i * 1000 + 5,
        "feature_set": "test-features",
        "feature_set_version": "1",
        "feature_set_hash": fs_hash,
        "names": names if names is not None else [],
        "values": values,
        "categories": {"country": "DE"},
    }
    return Record(
        topic="features",
        partition=0,
        offset=i if offset is None else offset,
        timestamp_ms=value["event_time"],
        key=entity_id.encode(),
        value=value,
        headers=(),
        schema="FeatureVector",
    )


def batch(n: int, *, seed: int = 0, start: int = 0, **kw: Any) -> list[Record]:
    rng = np.random.default_rng(seed)
    return [
        vector_record(start + i, rng.normal(size=N_FEATURES).round(4).tolist(), **kw)
        for i in range(n)
    ]
