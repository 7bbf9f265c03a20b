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
['adwin', 'page_hinkley']
>>> again = StreamDetectors.from_dict(DetectorParams(), det.to_dict())
>>> again.to_dict() == det.to_dict()
True
"""

from __future__ import annotations

import base64
import random
from collections import deque
from collections.abc import Sequence
from typing import Any

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
        default=50.0, gt=0, description="Page-Hinkley alarm level (lambda), in training sds."
    )
    ph_min_instances: int = Field(default=30, ge=1, description="Values before PH may fire.")
    ph_alpha: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Page-Hinkley forgetting factor. 1 = classic PH; river's default "
        "(1 - 1e-4) fires on stationary unit-variance data, see the decision page.",
    )
    kswin_every: int = Field(
        default=0, ge=0, description="Feed KSWIN every n-th value; 0 disables KSWIN."
    )
    kswin_alpha: float = Field(default=0.0001, gt=0, lt=1, description="KSWIN p-value level.")
    kswin_window: int = Field(default=300, ge=20, description="KSWIN sliding window size.")
    kswin_stat_size: int = Field(default=100, ge=10, description="KSWIN recent-sample size.")

    def fingerprint(self) -> str:
        """Changes when a parameter changes: detectors are rebuilt, not reloaded."""
        return self.model_dump_json()


class StreamDetectors:
    """ADWIN + Page-Hinkley (+ sampled KSWIN) over one standardised value stream."""

    __slots__ = ("_since_kswin", "adwin", "kswin", "page_hinkley", "params")

    def __init__(self, params: DetectorParams, *, seed: int = 0) -> None:
        self.params = params
        # river's detectors are untyped at call sites: Any keeps mypy strict elsewhere.
        adwin_class: Any = drift.ADWIN  # untyped constructor
        self.adwin: Any = (
            adwin_class(delta=params.adwin_delta, clock=params.adwin_clock)
            if params.adwin
            else None
        )
        self.page_hinkley: Any = (
            drift.PageHinkley(
                min_instances=params.ph_min_instances,
                delta=params.ph_delta,
                threshold=params.ph_threshold,
                alpha=params.ph_alpha,
            )
            if params.page_hinkley
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
        page_hinkley = self.page_hinkley
        if page_hinkley is not None:
            update = page_hinkley.update
            for i, value in enumerate(values):
                update(value)
                if page_hinkley.drift_detected:
                    hits.append((i, "page_hinkley", float(page_hinkley._x_mean.get())))
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
            ph = self.page_hinkley
            state["page_hinkley"] = {
                "n": ph._x_mean.n,
                "mean": ph._x_mean._mean,
                "sum_increase": ph._sum_increase,
                "sum_decrease": ph._sum_decrease,
                "min_increase": ph._min_increase,
                "max_decrease": ph._max_decrease,
                "detected": ph.drift_detected,
            }
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
            doc = state["page_hinkley"]
            ph = detectors.page_hinkley
            ph._x_mean.n = float(doc["n"])
            ph._x_mean._mean = float(doc["mean"])
            ph._sum_increase = float(doc["sum_increase"])
            ph._sum_decrease = float(doc["sum_decrease"])
            ph._min_increase = float(doc["min_increase"])
            ph._max_decrease = float(doc["max_decrease"])
            ph._drift_detected = bool(doc["detected"])
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
