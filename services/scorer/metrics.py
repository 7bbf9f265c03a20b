"""Prometheus metrics of the scorer (the runtime exports the generic ones).

Labels stay low-cardinality: route, role, reason, state. Model versions appear only in
``streamml_scorer_model_info``, one series per role at a time.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.scorer.breaker import BreakerState

_MODEL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

PREDICTIONS = Counter(
    "streamml_scorer_predictions_total",
    "Predictions made, by route (primary, canary, fallback, rules, shadow).",
    ["route"],
)
FALLBACKS = Counter(
    "streamml_scorer_fallbacks_total",
    "Records a route could not score and passed down the hierarchy, by route and reason.",
    ["route", "reason"],
)
MODEL_BATCH_SECONDS = Histogram(
    "streamml_scorer_model_batch_seconds",
    "onnxruntime time per micro-batch and route.",
    ["route"],
    buckets=_MODEL_BUCKETS,
)
BREAKER_STATE = Gauge(
    "streamml_scorer_breaker_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
    ["breaker"],
)
BREAKER_TRANSITIONS = Counter(
    "streamml_scorer_breaker_transitions_total",
    "Circuit breaker state changes, by the state entered.",
    ["breaker", "to_state"],
)
MODEL_REFUSED = Counter(
    "streamml_scorer_model_refused_total",
    "Model versions refused (not loaded or not swapped in), by reason.",
    ["role", "reason"],
)
MODEL_SWAPS = Counter(
    "streamml_scorer_model_swaps_total",
    "Route table changes taken into use between micro-batches, by role.",
    ["role"],
)
MODEL_INFO = Gauge(
    "streamml_scorer_model_info",
    "1 for the model version serving each role.",
    ["role", "model", "version"],
)
CANARY_ROLLBACKS = Counter(
    "streamml_scorer_canary_rollbacks_total",
    "Automatic canary rollbacks, by breached bound (error_rate, latency).",
    ["reason"],
)
SHADOW_FAILURES = Counter(
    "streamml_scorer_shadow_failures_total",
    "Shadow batches that produced no predictions, by reason.",
    ["reason"],
)
CONTROL_RECORDS = Counter(
    "streamml_scorer_control_records_total",
    "model.control records read, by outcome (applied, refused, invalid, unchanged).",
    ["outcome"],
)

_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def breaker_transition(name: str, old: BreakerState, new: BreakerState, why: str) -> None:
    """A :data:`~services.scorer.breaker.Transition` callback recording the change."""
    BREAKER_STATE.labels(name).set(_STATE_VALUE[new])
    BREAKER_TRANSITIONS.labels(name, new.value).inc()
