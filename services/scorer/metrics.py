"""Prometheus metrics of the scorer (the runtime exports the generic ones).

Labels stay low-cardinality: route, role, reason, state. Model versions appear only in
``streamml_scorer_model_info``, one series per role at a time.

The scoring core's metrics are a :class:`ScorerMetrics` handed to the processor (the
pattern of :mod:`streamml.metrics`); the model-control path (:mod:`services.scorer.control`,
:mod:`services.scorer.follower`) still counts on the two module-level counters below.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.scorer.breaker import BreakerState
from streamml.metrics import process_default

_MODEL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# The model-control path's counters (not the scoring core's).
MODEL_REFUSED = Counter(
    "streamml_scorer_model_refused_total",
    "Model versions refused (not loaded or not swapped in), by reason.",
    ["role", "reason"],
)
CONTROL_RECORDS = Counter(
    "streamml_scorer_control_records_total",
    "model.control records read, by outcome (applied, refused, invalid, unchanged).",
    ["outcome"],
)

_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class ScorerMetrics:
    """The scoring core's metrics: predictions and fallbacks by route, model time, the
    primary's breaker, route-table swaps, canary rollbacks and shadow failures.

    Built once by the service (:func:`default_metrics`) and handed to the processor; a
    test passes one on its own ``CollectorRegistry`` (see :mod:`streamml.metrics`).
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.predictions = Counter(
            "streamml_scorer_predictions_total",
            "Predictions made, by route (primary, canary, fallback, rules, shadow).",
            ["route"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "streamml_scorer_fallbacks_total",
            "Records a route could not score and passed down the hierarchy, by route and reason.",
            ["route", "reason"],
            registry=registry,
        )
        self.model_batch_seconds = Histogram(
            "streamml_scorer_model_batch_seconds",
            "onnxruntime time per micro-batch and route.",
            ["route"],
            buckets=_MODEL_BUCKETS,
            registry=registry,
        )
        self.breaker_state = Gauge(
            "streamml_scorer_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "streamml_scorer_breaker_transitions_total",
            "Circuit breaker state changes, by the state entered.",
            ["breaker", "to_state"],
            registry=registry,
        )
        self.model_swaps = Counter(
            "streamml_scorer_model_swaps_total",
            "Route table changes taken into use between micro-batches, by role.",
            ["role"],
            registry=registry,
        )
        self.model_info = Gauge(
            "streamml_scorer_model_info",
            "1 for the model version serving each role.",
            ["role", "model", "version"],
            registry=registry,
        )
        self.canary_rollbacks = Counter(
            "streamml_scorer_canary_rollbacks_total",
            "Automatic canary rollbacks, by breached bound (error_rate, latency).",
            ["reason"],
            registry=registry,
        )
        self.shadow_failures = Counter(
            "streamml_scorer_shadow_failures_total",
            "Shadow batches that produced no predictions, by reason.",
            ["reason"],
            registry=registry,
        )

    def breaker_transition(self, name: str, old: BreakerState, new: BreakerState, why: str) -> None:
        """A :data:`~services.scorer.breaker.Transition` callback recording the change."""
        self.breaker_state.labels(name).set(_STATE_VALUE[new])
        self.breaker_transitions.labels(name, new.value).inc()


# The process-wide metrics on the default registry (created once).
default_metrics = process_default(ScorerMetrics)
