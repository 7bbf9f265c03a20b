"""Train the demo models on the features service's own offline path, export, sign.

Parity by construction: the training matrix comes from
:func:`services.features.offline.build_matrix`, which runs the online features processor
in memory, so the model sees exactly the values the service will send it.

* primary: gradient-boosted trees (``GradientBoostingClassifier``);
* fallback: standardised logistic regression (a different model family, so what breaks one
  is unlikely to break the other);
* optional candidate: a bigger boosted model, as the next version of the primary's name,
  for shadow or canary.

Rows are split by event time (first 80% train, last 20% validation): a random split
would leak the future of a card into its past. The decision threshold maximises F1 on the
validation rows. Every export is checked against scikit-learn on the validation matrix
before it is signed.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from services.features.feature_set import demo_feature_set
from services.features.offline import FeatureMatrix, build_matrix
from services.scorer.artifact import next_version, write_version
from services.scorer.calibration import MAX_ECE, fit_calibration
from services.scorer.metadata import (
    ModelMetadata,
    ReferenceDistributions,
    category_frequencies,
    numeric_reference,
)
from streamml.errors import StreamMLError
from streamml.synthetic import generate_events

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)

PRIMARY_NAME = "fraud-gbt"
FALLBACK_NAME = "fraud-logreg"
ONNX_INPUT = "features"
ONNX_OUTPUT = "probabilities"
PARITY_TOLERANCE = 1e-5
# No row subsampling and a minimum leaf size: with ~2% positives, subsampled boosting can
# put extreme values in tiny leaves and invert on later data (seen: valid AUC 0.28 vs 0.98).
PRIMARY_PARAMS: dict[str, Any] = {
    "n_estimators": 150,
    "max_depth": 3,
    "learning_rate": 0.1,
    "min_samples_leaf": 20,
}
CANDIDATE_PARAMS: dict[str, Any] = {
    "n_estimators": 250,
    "max_depth": 4,
    "learning_rate": 0.05,
    "min_samples_leaf": 20,
}


class TrainingError(StreamMLError):
    """Training data or an export is not fit to become a model version."""


@dataclass(frozen=True)
class TrainedVersion:
    path: Path
    metadata: ModelMetadata


def build_training_set(events: int, seed: int) -> FeatureMatrix:
    """Synthetic events -> the online features code -> a labelled matrix."""
    pairs = list(generate_events(events, seed=seed))
    labels = {event["event_id"]: label for event, label in pairs}
    matrix = build_matrix(event for event, _ in pairs)
    matrix.attach_labels(labels)
    return matrix


def _split(matrix: FeatureMatrix) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    order = np.argsort(matrix.event_times, kind="stable")
    cut = int(len(order) * 0.8)
    return order[:cut], order[cut:]


def _export(estimator: Any, n_features: int) -> bytes:
    onnx_model = convert_sklearn(
        estimator,
        initial_types=[(ONNX_INPUT, FloatTensorType([None, n_features]))],
        options={id(estimator): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    data: bytes = onnx_model.SerializeToString()
    return data


def _onnx_scores(model_bytes: bytes, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: x})
    return np.asarray(probabilities, dtype=np.float64)[:, 1]


def _best_f1_threshold(y: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> float:
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(thresholds[best]) if len(thresholds) else 0.5


def _metrics(
    y: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], threshold: float
) -> dict[str, float]:
    decided = (scores >= threshold).astype(int)
    both = len(set(y.tolist())) == 2
    return {
        "auc": float(roc_auc_score(y, scores)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, scores)) if both else float("nan"),
        "log_loss": float(log_loss(y, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "brier": float(brier_score_loss(y, scores)),
        "precision": float(precision_score(y, decided, zero_division=0)),
        "recall": float(recall_score(y, decided, zero_division=0)),
        "f1": float(f1_score(y, decided, zero_division=0)),
        "validation_rows": float(len(y)),
        "validation_positive_rate": float(np.mean(y)) if len(y) else 0.0,
    }


def _reference(
    matrix: FeatureMatrix,
    train_idx: npt.NDArray[np.int64],
    train_scores: npt.NDArray[np.float64],
    seed: int,
) -> ReferenceDistributions:
    x = matrix.values[train_idx]
    # The training stream starts with empty histories too, but live windows are compared
    # with it only once they can be full (docs/decisions/drift-warmup.md).
    warmup = demo_feature_set().warmup_ms if matrix.feature_set == "card_fraud" else {}
    features = {
        name: numeric_reference(x[:, j].tolist(), seed=seed + j).model_copy(
            update={"warmup_ms": warmup.get(name, 0)}
        )
        for j, name in enumerate(matrix.names)
    }
    rows = [
        {attr: column[i] for attr, column in matrix.categories.items()} for i in train_idx.tolist()
    ]
    return ReferenceDistributions(
        features=features,
        score=numeric_reference(train_scores.tolist(), seed=seed),
        categories=category_frequencies(rows),
        rows=len(train_idx),
    )


SPAN_REFERENCE_ROWS = 50_000
"""Most rows a :func:`span_reference` is computed from (evenly spaced in event time)."""


def span_reference(
    *, events: int, seed: int, model_bytes: bytes, max_rows: int = SPAN_REFERENCE_ROWS
) -> ReferenceDistributions:
    """The reference a model trained by :func:`train_and_sign` would carry had it been
    trained on ``events`` events: the features of the first 80% by event time (at most
    ``max_rows`` of them, evenly spaced) and the model's own scores on them.

    No fitting, so a demo can keep a fixed-size model yet monitor a run against a
    reference covering as much event time as the run (history counts and day-long windows
    grow with it). Every event still goes through the offline features (~30 us each: a
    card's features need its whole history); the reference's quantiles, samples and
    category shares come from the spaced rows, which bounds the rest.
    """
    matrix = build_training_set(events, seed)
    if len(matrix) < 100:
        raise TrainingError(f"only {len(matrix)} usable rows from {events} events; use more")
    train_idx, _ = _split(matrix)
    if len(train_idx) > max_rows:
        train_idx = train_idx[np.linspace(0, len(train_idx) - 1, max_rows).astype(np.int64)]
    x32 = matrix.values[train_idx].astype(np.float32)
    return _reference(matrix, train_idx, _onnx_scores(model_bytes, x32), seed)


def train_and_sign(
    *,
    events: int,
    seed: int,
    out: Path,
    key: Ed25519PrivateKey,
    candidate: bool = False,
    created_at: dt.datetime | None = None,
    max_ece: float = MAX_ECE,
) -> list[TrainedVersion]:
    """Train primary + fallback (+ candidate), export to ONNX, write signed versions.

    Each version carries a calibration map fitted and judged on the validation rows
    (:func:`services.scorer.calibration.fit_calibration`); ``max_ece`` is the held-out
    expected calibration error above which it is marked not calibrated.
    """
    matrix = build_training_set(events, seed)
    if matrix.labels is None or len(matrix) < 100:
        raise TrainingError(f"only {len(matrix)} usable rows from {events} events; use more")
    train_idx, valid_idx = _split(matrix)
    y = matrix.labels
    if len(set(y[train_idx].tolist())) < 2:
        raise TrainingError("the training rows hold one class only; use more events")
    # Train on float32-rounded values: ONNX runs in float32, so tree splits agree exactly.
    x32 = matrix.values.astype(np.float32)
    x_train, x_valid = x32[train_idx].astype(np.float64), x32[valid_idx]
    stamp = (created_at or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")

    specs: list[tuple[str, str, Any, dict[str, Any]]] = [
        (
            PRIMARY_NAME,
            "GradientBoostingClassifier",
            GradientBoostingClassifier(**PRIMARY_PARAMS, random_state=seed),
            PRIMARY_PARAMS,
        ),
        (
            FALLBACK_NAME,
            "StandardScaler+LogisticRegression",
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)),
            {"C": 1.0, "max_iter": 2000},
        ),
    ]
    if candidate:
        specs.append(
            (
                PRIMARY_NAME,
                "GradientBoostingClassifier",
                GradientBoostingClassifier(**CANDIDATE_PARAMS, random_state=seed + 1),
                CANDIDATE_PARAMS,
            )
        )
    written = []
    for name, algorithm, estimator, params in specs:
        estimator.fit(x_train, y[train_idx])
        model_bytes = _export(estimator, len(matrix.names))
        onnx_valid = _onnx_scores(model_bytes, x_valid)
        sklearn_valid = estimator.predict_proba(x_valid.astype(np.float64))[:, 1]
        gap = float(np.max(np.abs(onnx_valid - sklearn_valid))) if len(x_valid) else 0.0
        if gap > PARITY_TOLERANCE:
            raise TrainingError(f"{name}: ONNX export differs from scikit-learn by {gap:.2e}")
        threshold = _best_f1_threshold(y[valid_idx], onnx_valid)
        train_scores = _onnx_scores(model_bytes, x32[train_idx])
        metadata = ModelMetadata(
            model_name=name,
            model_version=next_version(out, name),
            created_at=stamp,
            algorithm=algorithm,
            feature_set=matrix.feature_set,
            feature_set_version=matrix.feature_set_version,
            feature_set_hash=matrix.feature_set_hash,
            input_names=list(matrix.names),
            onnx_input=ONNX_INPUT,
            onnx_output=ONNX_OUTPUT,
            threshold=threshold,
            metrics={
                **_metrics(y[valid_idx], onnx_valid, threshold),
                "onnx_sklearn_max_abs_diff": gap,
            },
            training={
                "source": "streamml.synthetic.generate_events",
                "events": events,
                "seed": seed,
                "train_rows": len(train_idx),
                "train_positive_rate": float(np.mean(y[train_idx])),
                "split": "first 80% by event time",
                "params": params,
            },
            reference=_reference(matrix, train_idx, train_scores, seed),
            # valid_idx is in event-time order: fitted on its first half, judged on the rest.
            calibration=fit_calibration(onnx_valid, y[valid_idx], max_ece=max_ece),
        )
        path = write_version(out, model_bytes, metadata, key)
        log.info("wrote %s (auc %.3f)", path, metadata.metrics["auc"])
        written.append(TrainedVersion(path, metadata))
    return written
