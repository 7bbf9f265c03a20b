"""river's streaming drift detectors for one value stream, with explicit state.

Each monitored value (a numeric feature, or the score) gets ADWIN and Page-Hinkley, fed
with values standardised by the training mean and std so that one set of parameters
fits every feature; KSWIN is optional and sampled (every ``kswin_every``-th value)
because it runs a KS test per update (~7k updates/s against millions for the others).

State is written as plain data, never pickled: Page-Hinkley and KSWIN by their fields,
ADWIN by the bytes of river's own Rust serialiser (``AdaptiveWindowing.__getstate__``,
a fixed struct; no code runs on load). Those bytes are only loaded after the state blob's
HMAC verified (see :mod:`services.drift.statecodec` and docs/decisions/drift-state.md).

>>> det = StreamDetectors(DetectorParams())
>>> hits = det.update_many([0.0] * 500 + [3.0] * 200)
>>> sorted({name for _, name, _ in hits})
['adwin', 'page_hinkley', 'page_hinkley_spread']
>>> again = StreamDetectors.from_dict(DetectorParams(), det.to_dict())
>>> again.to_dict() == det.to_dict()
True
"""

from __future__ import annotations

import base64
import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import river
from pydantic import BaseModel, ConfigDict, Field
from river import drift

RIVER_VERSION: str = getattr(river, "__version__", "unknown")
"""State written by another river version is not loaded (its ADWIN layout may differ)."""

Detection = tuple[int, str, float]
"""(index of the value in the update, detector name, the detector's mean estimate)."""


class DetectorParams(BaseModel):
    """Streaming detector parameters for one value stream (defaults for standardised values)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    adwin: bool = Field(default=True, description="Run ADWIN on every value.")
    adwin_delta: float = Field(
        default=1e-7,
        gt=0,
        lt=1,
        description="ADWIN significance; smaller = fewer false alarms. river's 0.002 fires "
        "about once per 2M stationary values (measured), far too often at stream volumes; "
        "1e-7 still detects a 1-sd shift within ~100 values (see drift-tests decision).",
    )
    adwin_clock: int = Field(
        default=32, ge=1, description="ADWIN checks for a cut every this many values."
    )
    page_hinkley: bool = Field(default=True, description="Run Page-Hinkley on every value.")
    ph_delta: float = Field(
        default=0.25,
        ge=0,
        description="Page-Hinkley tolerated drift per value, in training standard deviations "
        "(about half the smallest mean shift worth detecting).",
    )
    ph_threshold: float = Field(
        default=30.0,
        gt=0,
        description="Page-Hinkley alarm level (lambda), in training sds. 30: none in 6.4M "
        "stationary values against 2,000-value references (25: none; 20: 25), a 1-sd shift "
        "found ~45 values after it (see the drift-tuning page).",
    )
    ph_min_instances: int = Field(default=30, ge=1, description="Values before PH may fire.")
    spread: bool = Field(
        default=True,
        description="Run a second Page-Hinkley on the squared standardised value minus 1: "
        "a change of spread (variance) with the same mean, which the mean detectors miss.",
    )
    spread_delta: float = Field(
        default=0.2,
        ge=0,
        description="Tolerated drift per value of the squared standardised value (its sd is "
        "0.89 under the reference; a doubled variance moves its mean by 0.39).",
    )
    spread_threshold: float = Field(
        default=40.0,
        gt=0,
        description="Alarm level of the spread Page-Hinkley (30 with delta 0.15 fired 9 times "
        "in 6.4M stationary values, 30 with 0.2 none: 40 keeps a margin).",
    )
    kswin_every: int = Field(
        default=0, ge=0, description="Feed KSWIN every n-th value; 0 disables KSWIN."
    )
    kswin_alpha: float = Field(default=0.0001, gt=0, lt=1, description="KSWIN p-value level.")
    kswin_window: int = Field(default=300, ge=20, description="KSWIN sliding window size.")
    kswin_stat_size: int = Field(default=100, ge=10, description="KSWIN recent-sample size.")

    category_window: int = Field(
        default=1_000,
        ge=0,
        description="Sliding chi-square of each categorical attribute: the last this many "
        "records of a partition against the reference, every category_step records, so a "
        "category change opens an episode without waiting for the event-time window. "
        "0 disables.",
    )
    category_step: int = Field(
        default=250, ge=1, description="Records between two sliding chi-square tests."
    )
    category_alpha: float = Field(
        default=1e-5,
        gt=0,
        lt=1,
        description="Level of one sliding chi-square test (Bonferroni across attributes): "
        "1e-5 at a test every 250 records is 0.04 expected false firings per 1M records.",
    )
    category_min_delta: float = Field(
        default=0.06,
        ge=0,
        le=1,
        description="...and the largest change of one category's share in the sliding "
        "window must be at least this (effect-size floor, above the 0.05 of the window "
        "test: 1,000 records are noisier than a window).",
    )

    def fingerprint(self) -> str:
        """Changes when a parameter changes: detectors are rebuilt, not reloaded."""
        return self.model_dump_json()


class StreamDetectors:
    """ADWIN + Page-Hinkley (+ sampled KSWIN) over one standardised value stream."""

    __slots__ = ("_since_kswin", "adwin", "kswin", "page_hinkley", "params", "spread")

    def __init__(self, params: DetectorParams, *, seed: int = 0) -> None:
        self.params = params
        # river's detectors are untyped at call sites: Any keeps mypy strict elsewhere.
        adwin_class: Any = drift.ADWIN  # untyped constructor
        self.adwin: Any = (
            adwin_class(delta=params.adwin_delta, clock=params.adwin_clock)
            if params.adwin
            else None
        )
        self.page_hinkley = (
            PageHinkley(params.ph_delta, params.ph_threshold, params.ph_min_instances)
            if params.page_hinkley
            else None
        )
        self.spread = (
            PageHinkley(params.spread_delta, params.spread_threshold, params.ph_min_instances)
            if params.spread
            else None
        )
        self.kswin: Any = (
            drift.KSWIN(
                alpha=params.kswin_alpha,
                window_size=params.kswin_window,
                stat_size=params.kswin_stat_size,
                seed=seed,
            )
            if params.kswin_every
            else None
        )
        self._since_kswin = 0

    def update_many(self, values: Sequence[float]) -> list[Detection]:
        """Feed ``values`` in order; return every detection with the index that caused it."""
        hits: list[Detection] = []
        update: Any
        adwin = self.adwin
        if adwin is not None:
            update = adwin.update
            for i, value in enumerate(values):
                update(value)
                if adwin.drift_detected:
                    hits.append((i, "adwin", float(adwin.estimation)))
        if self.page_hinkley is not None or self.spread is not None:
            array = np.asarray(values, dtype=np.float64)
            if self.page_hinkley is not None:
                hits.extend((i, "page_hinkley", m) for i, m in self.page_hinkley.update_many(array))
            if self.spread is not None:
                hits.extend(
                    (i, "page_hinkley_spread", m)
                    for i, m in self.spread.update_many(array * array - 1.0)
                )
        kswin = self.kswin
        if kswin is not None:
            every = self.params.kswin_every
            start = (every - self._since_kswin - 1) % every
            for i in range(start, len(values), every):
                kswin.update(values[i])
                if kswin.drift_detected:
                    hits.append((i, "kswin", float(kswin.p_value)))
            self._since_kswin = (self._since_kswin + len(values)) % every
        hits.sort(key=lambda hit: hit[0])
        return hits

    # -- explicit state ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able) holding everything the detectors need to go on."""
        state: dict[str, Any] = {}
        if self.adwin is not None:
            state["adwin"] = {
                "rust": base64.b64encode(self.adwin._helper.__getstate__()).decode(),
                "detected": self.adwin.drift_detected,
            }
        if self.page_hinkley is not None:
            state["page_hinkley"] = self.page_hinkley.to_dict()
        if self.spread is not None:
            state["page_hinkley_spread"] = self.spread.to_dict()
        if self.kswin is not None:
            ks = self.kswin
            version, internal, gauss = ks._rng.getstate()
            state["kswin"] = {
                "window": list(ks.window),
                "n": ks.n,
                "p_value": ks.p_value,
                "rng": [version, list(internal), gauss],
                "detected": ks.drift_detected,
                "since": self._since_kswin,
                "seed": ks.seed,
            }
        return state

    @classmethod
    def from_dict(cls, params: DetectorParams, state: dict[str, Any]) -> StreamDetectors:
        """Rebuild from :meth:`to_dict` output (already authenticated by the caller)."""
        detectors = cls(params)
        if detectors.adwin is not None and "adwin" in state:
            raw = base64.b64decode(state["adwin"]["rust"], validate=True)
            detectors.adwin._helper.__setstate__(raw)
            detectors.adwin._drift_detected = bool(state["adwin"]["detected"])
        if detectors.page_hinkley is not None and "page_hinkley" in state:
            detectors.page_hinkley.load(state["page_hinkley"])
        if detectors.spread is not None and "page_hinkley_spread" in state:
            detectors.spread.load(state["page_hinkley_spread"])
        if detectors.kswin is not None and "kswin" in state:
            doc = state["kswin"]
            ks = detectors.kswin
            ks.window = deque((float(v) for v in doc["window"]), maxlen=ks.window_size)
            ks.n = int(doc["n"])
            ks.p_value = float(doc["p_value"])
            version, internal, gauss = doc["rng"]
            rng = random.Random()
            rng.setstate((int(version), tuple(int(v) for v in internal), gauss))
            ks._rng = rng
            ks.seed = None if doc.get("seed") is None else int(doc["seed"])  # used on reset
            ks._drift_detected = bool(doc["detected"])
            detectors._since_kswin = int(doc["since"])
        return detectors


class PageHinkley:
    """Classic two-sided Page-Hinkley test (no forgetting), updated a batch at a time.

    The same test as river's ``drift.PageHinkley(alpha=1.0)`` (same running-mean
    deviations, same ``delta``/``threshold``/``min_instances``, same reset after a
    firing) computed with NumPy cumulative sums instead of one Python call per value:
    the drift service runs two per monitored value, and river's per-value update was
    most of its time. Its state is these public fields, so nothing depends on river's
    private attributes. ``tests/unit/drift/test_state.py`` checks that it fires on the
    same values as river's on seeded streams with and without changes.

    >>> ph = PageHinkley(delta=0.25, threshold=30.0, min_instances=30)
    >>> [i for i, _ in ph.update_many(np.r_[np.zeros(100), np.ones(100)])]
    [155]
    """

    __slots__ = ("delta", "max_decrease", "min_increase", "min_instances", "n",
                 "sum_decrease", "sum_increase", "threshold", "total")  # fmt: skip

    def __init__(self, delta: float, threshold: float, min_instances: int) -> None:
        self.delta = delta
        self.threshold = threshold
        self.min_instances = min_instances
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.total = 0.0
        self.sum_increase = 0.0
        self.sum_decrease = 0.0
        self.min_increase = math.inf
        self.max_decrease = -1.0  # river's initial value, kept for identical firings

    def update_many(self, values: npt.NDArray[np.float64]) -> list[tuple[int, float]]:
        """Feed ``values``; return (index, running mean) for every value that fired.

        After a firing the test starts afresh with the next value, as river's does.
        Every sum is accumulated value by value from the stored one (``np.cumsum`` is
        sequential), so the result does not depend on how the stream is cut in batches
        (a restart from state continues bit for bit).
        """
        hits: list[tuple[int, float]] = []
        start = 0
        while start < len(values):
            chunk = values[start:]
            counts = self.n + np.arange(1, len(chunk) + 1, dtype=np.float64)
            totals = _running_sum(self.total, chunk)
            means = totals / counts
            deviation = chunk - means
            increase = _running_sum(self.sum_increase, deviation - self.delta)
            decrease = _running_sum(self.sum_decrease, deviation + self.delta)
            min_increase = np.minimum(self.min_increase, np.minimum.accumulate(increase))
            max_decrease = np.maximum(self.max_decrease, np.maximum.accumulate(decrease))
            fired = (counts >= self.min_instances) & (
                (increase - min_increase > self.threshold)
                | (max_decrease - decrease > self.threshold)
            )
            where = np.flatnonzero(fired)
            if not len(where):
                last = len(chunk) - 1
                self.n = int(counts[last])
                self.total = float(totals[last])
                self.sum_increase = float(increase[last])
                self.sum_decrease = float(decrease[last])
                self.min_increase = float(min_increase[last])
                self.max_decrease = float(max_decrease[last])
                break
            at = int(where[0])
            hits.append((start + at, float(means[at])))
            self._reset()
            start += at + 1
        return hits

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "total": self.total,
            "sum_increase": self.sum_increase,
            "sum_decrease": self.sum_decrease,
            # JSON has no infinity: None stands for "no value yet"
            "min_increase": None if math.isinf(self.min_increase) else self.min_increase,
            "max_decrease": self.max_decrease,
        }

    def load(self, doc: Mapping[str, Any]) -> None:
        self.n = int(doc["n"])
        self.total = float(doc["total"])
        self.sum_increase = float(doc["sum_increase"])
        self.sum_decrease = float(doc["sum_decrease"])
        low = doc["min_increase"]
        self.min_increase = math.inf if low is None else float(low)
        self.max_decrease = float(doc["max_decrease"])


def _running_sum(start: float, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``start + values[0]``, ``(start + values[0]) + values[1]``, ... in that order."""
    sums: npt.NDArray[np.float64] = np.cumsum(np.concatenate(([start], values)))[1:]
    return sums
