"""The optional C kernel of the per-event aggregates, and whether this process may use it.

``services.features._native`` (services/features/_native.c, built by setup.py when a C
compiler is there) computes the aggregates of the demo kinds with the same numbers as the
Python code, bit for bit. On import it is checked against ``math`` on values where a
platform could differ (signed zeros, exact-sum rounding, ``log1p``, ``sqrt``); if any
answer differs, or the module was not built, :data:`KERNEL` is None and the feature set
computes in Python. ``STREAMML_FEATURES_NATIVE=false`` turns it off (for comparisons).

See docs/decisions/features-native-aggregates.md.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from array import array
from types import ModuleType

log = logging.getLogger(__name__)


def _load() -> ModuleType | None:
    if os.environ.get("STREAMML_FEATURES_NATIVE", "true").strip().lower() in {"0", "false", "no"}:
        return None
    try:
        from services.features import _native  # type: ignore[attr-defined]
    except ImportError:
        log.info("the C aggregates kernel is not built; aggregates are computed in Python")
        return None
    if not _agrees(_native):
        log.warning("the C aggregates kernel disagrees with Python's math here; not used")
        return None
    module: ModuleType = _native
    return module


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


_SUMS = (
    [-0.0],
    [-0.0, -0.0],
    [0.1] * 10,
    [1e16, 1.0, -1e16],
    [1e308, -1e308, 1e-308],
    [2.0**53, 1.0, 1e-16],
    [1.0, 1e100, 1.0, -1e100],
    [5e-324, 5e-324, -0.0],
)


def _agrees(module: ModuleType) -> bool:
    """Whether the kernel answers like ``math`` on the cases platforms get wrong."""
    for terms in _SUMS:
        if _bits(module.fsum(array("d", terms))) != _bits(math.fsum(terms)):
            return False
    # One event with a history: every step, through log1p and sqrt.
    times = array("q", [1_000, 2_000, 3_000])
    values = array("d", [0.1, 7.25, 1e-3])
    got = module.aggregates(
        times,
        values,
        [2.5],
        4,
        500,
        9_000,
        3.0,
        1_000,
        ((0, (7_500, 9_000)), (1, 99.0), (2,), (3,)),
    )
    settled_sum = math.fsum([2.5, 0.1, 7.25, 1e-3])
    window = [7.25, 1e-3]
    mean = math.fsum(window) / 2
    every = [0.1, 7.25, 1e-3]
    mean3 = math.fsum(every) / 3
    expected = [
        2.0, math.fsum(window), mean,
        math.sqrt(math.fsum((v - mean) * (v - mean) for v in window) / 2), 1e-3, 7.25,
        3.0, math.fsum(every), mean3,
        math.sqrt(math.fsum((v - mean3) * (v - mean3) for v in every) / 3), 1e-3, 7.25,
        math.log1p(min((9_000 - 3_000) / 1000.0, 99.0)),
        3.0 / (settled_sum / 7),
        math.log1p(7),
    ]  # fmt: skip
    return bool(got == struct.pack(f"<{len(expected)}d", *expected))


KERNEL: ModuleType | None = _load()
