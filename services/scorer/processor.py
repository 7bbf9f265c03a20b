"""The scorer's pure core: feature vectors in, predictions out.

Per micro-batch:

1. take the current route table once (a hot reload swaps it only between batches);
2. validate the vectors: empty, NaN/inf or out of float32 range, wrong length or names
   for their feature set -> :class:`Rejection` (to ``features.dlq``). Names are checked
   when the value carries them; the service decodes vectors without them by default
   (``FeatureVector[-names]``, see :data:`NAMELESS_VECTOR`), and the rules route then gets
   them from a model of the vector's feature set, else from ``names_of`` (a full decode);
3. split by a stable hash of the entity into canary and main traffic;
4. score each group as ONE float32 batch per route: canary -> (on failure) the main
   hierarchy; main: primary (behind the circuit breaker) -> fallback -> rules/default.
   A route fails a batch when the model raises, returns a non-finite or out-of-range
   score, or (primary and canary) exceeds the latency budget;
5. score the shadow model on the same inputs into ``predictions.shadow`` only;
6. roll the canary back when its error or latency bound is breached: stop routing to it
   here and now, and write a ``clear`` instruction to ``model.control`` in the same
   transaction, so every instance follows and a restart does not bring it back.

Model time comes from an injected monotonic clock and ``scored_at`` from an injected
wall clock, so tests fix both. Nothing here imports Kafka.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from services.scorer.breaker import CircuitBreaker
from services.scorer.control import SCHEMA as CONTROL_SCHEMA
from services.scorer.control import control_record
from services.scorer.metrics import ScorerMetrics, default_metrics
from services.scorer.model import OnnxModel, Scores
from services.scorer.routing import (
    ROLES,
    CanaryMonitor,
    ModelRoutes,
    RouteEntry,
    RouteTable,
    canary_bucket,
)
from services.scorer.rules import RulesScorer
from streamml.errors import DecodeError
from streamml.logs import fields
from streamml.processor import Output, Processor, Record, Rejection, Result
from streamml.state import State

if TYPE_CHECKING:
    from streamml.codec import AvroCodec

log = logging.getLogger(__name__)

PREDICTION_SCHEMA = "Prediction"
VECTOR_SCHEMA = "FeatureVector"
NAMELESS_VECTOR = "FeatureVector[-names]"
"""The codec projection the service reads its input with: names cost ~20 us per vector to
decode and are needed only by the rules route (docs/decisions/scorer-names-projection.md)."""
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class ScoringPolicy:
    """Budgets and bounds of the routes (the scorer settings document each one)."""

    latency_budget_ms: float = 50.0
    breaker_failure_threshold: int = 3
    breaker_cooldown_s: float = 30.0
    canary_max_error_rate: float = 0.05
    canary_max_latency_ms: float = 100.0
    canary_max_slow_rate: float = 0.2
    canary_min_records: int = 200
    canary_window_records: int = 2000


@dataclass(slots=True)
class _Vector:
    record: Record
    value: Mapping[str, Any]
    entity_id: str
    feature_set_hash: str
    values: Sequence[float]
    """A list, or a float64 NumPy array (the codec's projection reads them so)."""
    matrix: np.ndarray[Any, Any] | None = None
    """The float64 matrix of the batch's vectors of this width, and this vector's row."""
    row: int = -1


@dataclass(frozen=True)
class _Run:
    """The outcome of one model on one batch."""

    scores: Scores | None
    failure: str | None
    latency_ms: float


@dataclass
class _Batch:
    """The working set of one micro-batch."""

    table: RouteTable
    vectors: list[_Vector]
    served: list[dict[str, Any] | None]
    reasons: dict[int, str | None]
    scored_at: int
    routes: Counter[str] = field(default_factory=Counter)
    """Predictions served per route (for the metric)."""


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _millis(value: Any) -> int:
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    return int(value)


class ScorerProcessor(Processor):
    """Scores FeatureVectors with the models of a :class:`ModelRoutes` table."""

    def __init__(
        self,
        routes: ModelRoutes,
        *,
        predictions_topic: str,
        shadow_topic: str,
        control_topic: str | None,
        rules: RulesScorer,
        policy: ScoringPolicy | None = None,
        clock: Callable[[], int] = _wall_clock_ms,
        monotonic: Callable[[], float] = time.perf_counter,
        instance: str = "scorer",
        names_of: Callable[[Record], Sequence[str]] | None = None,
        metrics: ScorerMetrics | None = None,
    ) -> None:
        """``names_of`` returns the feature names of a record decoded without them (the
        :data:`NAMELESS_VECTOR` projection); the rules route calls it only for a vector of a
        feature set no loaded model knows. None: such vectors are scored on no names."""
        self.metrics = metrics or default_metrics()
        self._routes = routes
        self._names_of = names_of
        self._predictions_topic = predictions_topic
        self._shadow_topic = shadow_topic
        self._control_topic = control_topic
        self._rules = rules
        self._policy = policy or ScoringPolicy()
        self._clock = clock
        self._monotonic = monotonic
        self._instance = instance
        self._breaker = CircuitBreaker(
            "primary",
            failure_threshold=self._policy.breaker_failure_threshold,
            cooldown_s=self._policy.breaker_cooldown_s,
            clock=monotonic,
            on_transition=self.metrics.breaker_transition,
        )
        self.metrics.breaker_state.labels("primary").set(0)
        self._canary_monitor = CanaryMonitor(
            max_error_rate=self._policy.canary_max_error_rate,
            max_latency_ms=self._policy.canary_max_latency_ms,
            max_slow_rate=self._policy.canary_max_slow_rate,
            min_records=self._policy.canary_min_records,
            window_records=self._policy.canary_window_records,
        )
        self._generation = -1
        self._table = RouteTable()
        self._serving: dict[str, tuple[str, str]] = {}
        # The control offset of a canary this instance rolled back: ignored until re-promoted.
        self._rolled_back_canary: int | None = None
        self._observed_hash: str | None = None

    # -- what the service and the control follower ask ------------------------------------

    @property
    def observed_feature_set_hash(self) -> str | None:
        """The feature set hash of the last valid vector seen (None before the first)."""
        return self._observed_hash

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    def is_ready(self) -> bool:
        _, table = self._routes.current()
        return table.primary is not None

    # -- the batch -------------------------------------------------------------------------

    def process(self, records: Sequence[Record], state: State) -> Result:
        table = self._take_routes()
        result = Result()
        vectors = self._validate(records, table, result.rejections)
        if not vectors:
            return result
        self._observed_hash = vectors[-1].feature_set_hash
        batch = _Batch(
            table=table,
            vectors=vectors,
            served=[None] * len(vectors),
            reasons={},
            scored_at=self._clock(),
        )
        canary = table.canary
        canary_idx: list[int] = []
        if canary is not None:
            share = table.canary_share
            canary_idx = [
                i
                for i, vec in enumerate(vectors)
                if vec.feature_set_hash == canary.model.feature_set_hash
                and canary_bucket(vec.entity_id.encode()) < share
            ]
        in_canary = set(canary_idx)
        main_idx = [i for i in range(len(vectors)) if i not in in_canary]
        batch.reasons = dict.fromkeys(main_idx)
        if canary is not None and canary_idx:
            failed, why = self._score_canary(canary, batch, canary_idx)
            for i in failed:
                batch.reasons[i] = f"canary_{why}"
            main_idx = sorted(main_idx + failed)
        self._score_hierarchy(batch, main_idx)
        topic, outputs = self._predictions_topic, result.outputs
        for vec, prediction in zip(vectors, batch.served, strict=True):
            assert prediction is not None  # the rules route always answers
            outputs.append(
                Output(
                    topic, PREDICTION_SCHEMA, prediction, vec.entity_id, vec.record.replay_headers()
                )
            )
        for route, count in batch.routes.items():
            self.metrics.predictions.labels(route).inc(count)
        if table.shadow is not None:
            result.outputs.extend(self._score_shadow(table.shadow, batch))
        if canary is not None and canary_idx:
            control = self._check_canary(canary, table)
            if control is not None:
                result.outputs.append(control)
        return result

    # -- route table -----------------------------------------------------------------------

    def _take_routes(self) -> RouteTable:
        generation, table = self._routes.current()
        if generation != self._generation:
            self._generation = generation
            old = self._table
            if (
                table.canary is not None
                and self._rolled_back_canary is not None
                and table.canary.revision != self._rolled_back_canary
            ):
                self._rolled_back_canary = None  # promoted again (or another): honour it
            for role in ROLES:
                before, after = old.get(role), table.get(role)
                if _same(before, after):
                    continue
                self.metrics.model_swaps.labels(role).inc()
                if role in self._serving:
                    self.metrics.model_info.remove(role, *self._serving.pop(role))
                if after is not None:
                    self._serving[role] = (after.model.name, after.model.version)
                    self.metrics.model_info.labels(role, after.model.name, after.model.version).set(
                        1
                    )
                log.info(
                    "route swapped",
                    extra=fields(
                        role=role,
                        before=before.model.label if before else "nothing",
                        after=after.model.label if after else "nothing",
                    ),
                )
                if role == "primary":
                    self._breaker.reset("new primary version")
                if role == "canary":
                    self._canary_monitor.reset()
            self._table = table
        table = self._table
        if table.canary is not None and table.canary.revision == self._rolled_back_canary:
            table = table.with_role("canary", None)
        return table

    # -- validation ------------------------------------------------------------------------

    def _validate(
        self, records: Sequence[Record], table: RouteTable, rejections: list[Rejection]
    ) -> list[_Vector]:
        models = table.models()
        # Per feature set hash: its model and input width, looked up once per batch.
        by_hash: dict[str, tuple[OnnxModel, int] | None] = {}
        vectors: list[_Vector] = []
        # Indices into ``vectors`` per width: one matrix each (normally one per batch).
        by_width: dict[int, list[int]] = {}
        for record in records:
            value = record.value
            values = value.get("values")
            names = value.get("names")
            fs_hash = value.get("feature_set_hash", "")
            if type(fs_hash) is not str:
                fs_hash = str(fs_hash)
            if values is None or len(values) == 0:
                rejections.append(Rejection(record, "validation.empty", "no feature values"))
                continue
            width = len(values)
            if fs_hash in by_hash:
                expected = by_hash[fs_hash]
            else:
                model = next((m for m in models if m.feature_set_hash == fs_hash), None)
                expected = None if model is None else (model, model.n_inputs)
                by_hash[fs_hash] = expected
            if expected is not None and width != expected[1]:
                rejections.append(
                    Rejection(
                        record,
                        "validation.length",
                        f"{width} values, feature set {fs_hash[:12]} has {expected[1]}",
                    )
                )
                continue
            if names and (
                len(names) != width
                or (expected is not None and list(names) != expected[0].metadata.input_names)
            ):
                rejections.append(
                    Rejection(
                        record,
                        "validation.names",
                        "feature names do not match the feature set's input order",
                    )
                )
                continue
            entity_id = value["entity_id"]
            indices = by_width.get(width)
            if indices is None:
                indices = by_width[width] = []
            indices.append(len(vectors))
            vectors.append(
                _Vector(
                    record,
                    value,
                    entity_id if type(entity_id) is str else str(entity_id),
                    fs_hash,
                    values,
                    None,
                    len(indices) - 1,
                )
            )
        if not vectors:
            return vectors
        # The range check runs vectorised, and the model routes slice their rows from the
        # matrix instead of rebuilding arrays.
        bad: set[int] = set()
        for indices in by_width.values():
            matrix = np.array([vectors[i].values for i in indices], dtype=np.float64)
            ok = np.isfinite(matrix).all(axis=1) & (np.abs(matrix) <= _FLOAT32_MAX).all(axis=1)
            if not ok.all():
                bad.update(indices[j] for j in np.flatnonzero(~ok))
            for i in indices:
                vectors[i].matrix = matrix
        for i in sorted(bad):
            rejections.append(
                Rejection(
                    vectors[i].record,
                    "validation.non_finite",
                    "a feature value is NaN, infinite or beyond float32 range",
                )
            )
        if not bad:
            return vectors
        return [vec for i, vec in enumerate(vectors) if i not in bad]

    # -- routes ----------------------------------------------------------------------------

    def _run(self, model: OnnxModel, matrix: np.ndarray[Any, Any], *, budget: bool) -> _Run:
        start = self._monotonic()
        try:
            scores = model.predict(matrix)
        except Exception as exc:  # whatever the model does wrong, the batch falls back
            latency_ms = (self._monotonic() - start) * 1000.0
            log.warning("model failed on a batch",
                        extra=fields(model=model.label, rows=len(matrix), error=exc))  # fmt: skip
            return _Run(None, "error", latency_ms)
        latency_ms = (self._monotonic() - start) * 1000.0
        if not np.isfinite(scores).all():
            log.warning("model returned non-finite scores", extra=fields(model=model.label))
            return _Run(None, "non_finite", latency_ms)
        if (scores < 0.0).any() or (scores > 1.0).any():
            log.warning("model returned scores outside [0, 1]", extra=fields(model=model.label))
            return _Run(None, "out_of_range", latency_ms)
        if budget and latency_ms > self._policy.latency_budget_ms:
            log.warning(
                "model over its latency budget",
                extra=fields(
                    model=model.label,
                    latency_ms=round(latency_ms, 1),
                    rows=len(matrix),
                    budget_ms=self._policy.latency_budget_ms,
                ),
            )
            return _Run(None, "latency_budget", latency_ms)
        return _Run(scores, None, latency_ms)

    def _model_route(
        self, route: str, entry: RouteEntry, batch: _Batch, indices: list[int], *, budget: bool
    ) -> tuple[list[int], _Run | None]:
        """Run ``entry`` on the indices its feature set fits: (eligible, run or None)."""
        model = entry.model
        vectors = batch.vectors
        fs_hash = model.feature_set_hash
        eligible = [i for i in indices if vectors[i].feature_set_hash == fs_hash]
        if not eligible:
            return eligible, None
        run = self._run(model, _rows(vectors, eligible), budget=budget)
        self.metrics.model_batch_seconds.labels(route).observe(run.latency_ms / 1000.0)
        return eligible, run

    def _serve(
        self, batch: _Batch, entry: RouteEntry, route: str, eligible: list[int], run: _Run
    ) -> None:
        assert run.scores is not None
        model = entry.model
        by = _ServedBy(
            model.name, model.version, model.threshold, route, run.latency_ms, batch.scored_at
        )
        vectors, served, reasons = batch.vectors, batch.served, batch.reasons
        # Python floats from the float64 scores, the same numbers float() gives one by one.
        for i, score in zip(eligible, run.scores.tolist(), strict=True):
            served[i] = _prediction(vectors[i], score, reasons.get(i), by)
        batch.routes[route] += len(eligible)

    def _score_canary(
        self, canary: RouteEntry, batch: _Batch, indices: list[int]
    ) -> tuple[list[int], str | None]:
        """Score the canary share; return the indices it could not score and why."""
        eligible, run = self._model_route("canary", canary, batch, indices, budget=True)
        assert run is not None  # canary indices were selected by the canary's feature set
        self._canary_monitor.record(
            len(eligible), failed=run.failure is not None, latency_ms=run.latency_ms
        )
        if run.scores is None:
            self.metrics.fallbacks.labels("canary", run.failure or "error").inc(len(eligible))
            return eligible, run.failure
        self._serve(batch, canary, "canary", eligible, run)
        return [], None

    def _score_hierarchy(self, batch: _Batch, indices: list[int]) -> None:
        pending = list(indices)
        if not pending:
            return
        reasons = batch.reasons
        # 1. primary, behind the breaker
        primary = batch.table.primary
        if primary is None:
            self._note(pending, reasons, "primary", "no_primary")
        elif not self._breaker.allow():
            self._note(pending, reasons, "primary", "breaker_open")
        else:
            eligible, run = self._model_route("primary", primary, batch, pending, budget=True)
            fits = set(eligible)
            self._note(
                [i for i in pending if i not in fits], reasons, "primary", "feature_set_mismatch"
            )
            if run is not None and run.scores is None:
                self._breaker.record_failure(run.failure or "error")
                self._note(eligible, reasons, "primary", run.failure or "error")
            elif run is not None:
                self._breaker.record_success()
                self._serve(batch, primary, "primary", eligible, run)
                pending = [i for i in pending if i not in fits]
        # 2. fallback model: no latency budget, its job is to answer
        fallback = batch.table.fallback
        if pending and fallback is not None:
            eligible, run = self._model_route("fallback", fallback, batch, pending, budget=False)
            if run is not None and run.scores is not None:
                self._serve(batch, fallback, "fallback", eligible, run)
                fits = set(eligible)
                pending = [i for i in pending if i not in fits]
            elif run is not None:
                self._note(eligible, reasons, "fallback", run.failure or "error", append=True)
        # 3. rules: always answers
        for i in pending:
            batch.served[i] = self._rules_prediction(batch, i)

    def _note(
        self,
        indices: list[int],
        reasons: dict[int, str | None],
        route: str,
        reason: str,
        *,
        append: bool = False,
    ) -> None:
        """Record why ``route`` did not score these records (the first reason stays first)."""
        if indices:
            self.metrics.fallbacks.labels(route, reason).inc(len(indices))
        for i in indices:
            if reasons[i] is None:
                reasons[i] = reason
            elif append:
                reasons[i] = f"{reasons[i]};{route}_{reason}"

    def _score_shadow(self, shadow: RouteEntry, batch: _Batch) -> list[Output]:
        everyone = list(range(len(batch.vectors)))
        eligible, run = self._model_route("shadow", shadow, batch, everyone, budget=False)
        if run is None:
            self.metrics.shadow_failures.labels("feature_set_mismatch").inc()
            return []
        if run.scores is None:
            self.metrics.shadow_failures.labels(run.failure or "error").inc()
            return []
        self.metrics.predictions.labels("shadow").inc(len(eligible))
        model = shadow.model
        by = _ServedBy(
            model.name, model.version, model.threshold, "shadow", run.latency_ms, batch.scored_at
        )
        topic = self._shadow_topic
        outputs = []
        for i, score in zip(eligible, run.scores.tolist(), strict=True):
            vec = batch.vectors[i]
            value = _prediction(vec, score, None, by)
            outputs.append(
                Output(topic, PREDICTION_SCHEMA, value, vec.entity_id, vec.record.replay_headers())
            )
        return outputs

    def _check_canary(self, canary: RouteEntry, table: RouteTable) -> Output | None:
        breach = self._canary_monitor.breach()
        if breach is None:
            return None
        bound, message = breach
        self._rolled_back_canary = canary.revision
        self._canary_monitor.reset()
        self.metrics.canary_rollbacks.labels(bound).inc()
        log.error(
            "canary rolled back automatically; its share goes back to the primary",
            extra=fields(model=canary.model.label, reason=message),
        )
        if self._control_topic is None:
            return None
        value = control_record(
            "canary",
            "clear",
            model_name=canary.model.name,
            model_version=canary.model.version,
            issued_at_ms=self._clock(),
            issued_by=f"scorer:auto-rollback:{self._instance}",
            previous={
                "action": "promote",
                "model_name": canary.model.name,
                "model_version": canary.model.version,
                "canary_share": table.canary_share,
            },
            reason=f"automatic rollback: {message}",
        )
        return Output(topic=self._control_topic, schema=CONTROL_SCHEMA, key="canary", value=value)

    # -- predictions -----------------------------------------------------------------------

    def _rules_prediction(self, batch: _Batch, i: int) -> dict[str, Any]:
        vec = batch.vectors[i]
        # A vector that carries names and has a model of its feature set passed validation
        # only if both agree, so the model's input order is the vector's names then.
        names = vec.value.get("names") or next(
            (
                m.metadata.input_names
                for m in batch.table.models()
                if m.feature_set_hash == vec.feature_set_hash
            ),
            None,
        )
        if names is None:
            names = []
            if "names" not in vec.value and self._names_of is not None:
                names = self._names_of(vec.record)  # decoded without names: decode them now
        values = vec.values
        if isinstance(values, np.ndarray):
            values = values.tolist()  # Python floats, as a list of values would hold
        score = self._rules.score(dict(zip(names, values, strict=False)))
        batch.routes["rules"] += 1
        rules = self._rules
        by = _ServedBy(rules.name, rules.version, rules.threshold, "rules", 0.0, batch.scored_at)
        return _prediction(vec, score, batch.reasons.get(i) or "no_model", by)


class _ServedBy(NamedTuple):
    """What every prediction a route makes for one batch shares."""

    model_name: str
    model_version: str
    threshold: float
    route: str
    latency_ms: float
    scored_at: int


def _prediction(vec: _Vector, score: float, reason: str | None, by: _ServedBy) -> dict[str, Any]:
    """The Prediction value of ``vec`` scored ``score`` by ``by``."""
    model_name, model_version, threshold, route, latency_ms, scored_at = by
    value = vec.value
    event_time = value["event_time"]
    computed_at = value.get("computed_at")
    return {
        "event_id": value["event_id"],
        "entity_id": vec.entity_id,
        "event_time": event_time if type(event_time) is int else _millis(event_time),
        "scored_at": scored_at,
        "model_name": model_name,
        "model_version": model_version,
        "score": score,
        "threshold": threshold,
        "decision": score >= threshold,
        "route": route,
        "fallback_reason": reason,
        "latency_ms": latency_ms,
        "feature_set_hash": vec.feature_set_hash,
        "features_computed_at": (
            computed_at if computed_at is None or type(computed_at) is int else _millis(computed_at)
        ),
        "segments": value.get("categories") or {},
    }


def names_decoder(codec: AvroCodec) -> Callable[[Record], list[str]]:
    """``names_of`` for :class:`ScorerProcessor`: the names of a record read as
    :data:`NAMELESS_VECTOR`, decoded from its bytes as the full FeatureVector ([] when the
    record has no bytes or its names do not decode, as a vector without names)."""

    def names_of(record: Record) -> list[str]:
        if record.raw_value is None:
            return []
        try:
            value = codec.decode(record.raw_value, VECTOR_SCHEMA, topic=record.topic)
        except DecodeError:
            return []
        return list(value.get("names") or [])

    return names_of


def _rows(vectors: list[_Vector], indices: list[int]) -> np.ndarray[Any, Any]:
    """The float32 input matrix of ``vectors[indices]``, in that order."""
    shared = vectors[indices[0]].matrix
    if shared is not None and all(vectors[i].matrix is shared for i in indices):
        rows = [vectors[i].row for i in indices]
        if (
            len(rows) == len(shared)
            and rows[-1] == len(rows) - 1
            and rows == list(range(len(rows)))
        ):
            return shared.astype(np.float32)  # every row in order: no gather
        return shared[np.array(rows, dtype=np.intp)].astype(np.float32)
    return np.array([vectors[i].values for i in indices], dtype=np.float32)


def _same(a: RouteEntry | None, b: RouteEntry | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.model is b.model
