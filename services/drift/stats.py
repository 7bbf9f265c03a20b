"""Window tests against the training reference: PSI, binned two-sample KS, chi-square.

Every test takes counts, not raw values, so windows from several partitions are merged
by adding their counts before the test runs (one test per window, not one per partition).

>>> expected = np.array([0.25, 0.25, 0.25, 0.25])
>>> round(psi(expected, np.array([25, 25, 25, 25])), 6)
0.0
>>> psi(expected, np.array([70, 10, 10, 10])) > 0.25
True
>>> benjamini_hochberg([0.01, 0.02, 0.03, 0.5])
[0.04, 0.04, 0.04, 0.5]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import special, stats  # type: ignore[import-untyped]

from services.drift.reference import MIN_PROPORTION

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def psi(expected: FloatArray, counts: IntArray) -> float:
    """Population stability index of window ``counts`` against ``expected`` proportions.

    Empty window bins are floored like the reference (:data:`MIN_PROPORTION`), the usual
    convention that keeps PSI finite.
    """
    total = counts.sum()
    if total <= 0:
        return 0.0
    actual = np.maximum(counts / total, MIN_PROPORTION)
    actual = actual / actual.sum()
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_binned(
    reference_cdf: FloatArray, grid_counts: IntArray, reference_size: int
) -> tuple[float, float]:
    """Two-sample KS statistic D and its asymptotic p-value, from binned window counts.

    ``grid_counts[i]`` counts window values in ``(grid[i-1], grid[i]]`` (last bin open), so
    the window CDF is known exactly at the grid points, where D is evaluated. With the grid
    at percentiles of the reference sample, this D is the exact statistic up to at most one
    percentile of reference mass (it can only be smaller), a price paid for mergeable,
    constant-size windows. The p-value uses the Kolmogorov distribution with the
    effective size ``n*m/(n+m)``.
    """
    n = int(grid_counts.sum())
    if n == 0 or reference_size == 0 or len(reference_cdf) == 0:
        return 0.0, 1.0
    window_cdf = np.cumsum(grid_counts[:-1]) / n
    d = float(np.max(np.abs(window_cdf - reference_cdf)))
    effective = n * reference_size / (n + reference_size)
    return d, float(special.kolmogorov(d * math.sqrt(effective)))


def chi_square(expected: FloatArray, counts: IntArray) -> tuple[float, float]:
    """Pearson chi-square of ``counts`` against ``expected`` proportions, and its p-value."""
    total = counts.sum()
    if total <= 0 or len(counts) < 2:
        return 0.0, 1.0
    predicted = expected * total
    statistic = float(np.sum((counts - predicted) ** 2 / predicted))
    return statistic, float(stats.chi2.sf(statistic, len(counts) - 1))


def chi_square_two_sample(
    expected: FloatArray, counts: IntArray, reference_size: int
) -> tuple[float, float]:
    """Chi-square test of homogeneity: window ``counts`` vs a reference of ``reference_size``
    records with shares ``expected``, and its p-value.

    The reference is itself a sample, so its shares are not taken as exact (a test
    against exact shares fires ever more often as windows grow). With ``reference_size``
    0 (unknown) this is the one-sample test against ``expected``.

    >>> stat, p = chi_square_two_sample(np.array([0.5, 0.5]), np.array([60, 40]), 100)
    >>> round(stat, 3), round(p, 4)
    (2.02, 0.1552)
    """
    if reference_size <= 0:
        return chi_square(expected, counts)
    total = float(counts.sum())
    if total <= 0 or len(counts) < 2:
        return 0.0, 1.0
    reference = expected * reference_size
    columns = counts + reference
    keep = columns > 0
    if keep.sum() < 2:
        return 0.0, 1.0
    observed = np.vstack([counts[keep], reference[keep]])
    grand = total + reference_size
    predicted = np.outer([total, reference_size], columns[keep]) / grand
    statistic = float(np.sum((observed - predicted) ** 2 / predicted))
    return statistic, float(stats.chi2.sf(statistic, int(keep.sum()) - 1))


def largest_share_change(expected: FloatArray, counts: IntArray) -> float:
    """Largest absolute change of one category's share (the chi-square test's effect size)."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    return float(np.max(np.abs(counts / total - expected)))


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate across features)."""
    m = len(p_values)
    if m == 0:
        return []
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p_values[i] * m / rank)
        adjusted[i] = round(min(running, 1.0), 12)
    return adjusted


def proportion_z(successes: int, trials: int, expected: float) -> float:
    """z-score of an observed share against an expected one (normal approximation)."""
    if trials <= 0:
        return 0.0
    p = min(max(expected, 1e-6), 1 - 1e-6)
    return (successes / trials - p) / math.sqrt(p * (1 - p) / trials)


def proportion_z_two_sample(
    successes: int, trials: int, expected: float, reference_size: int
) -> float:
    """z-score of an observed share against a share estimated from ``reference_size`` draws.

    Pooled two-proportion test: the reference share's own standard error is included,
    so the false-alarm rate does not grow with the window's volume. ``reference_size`` 0
    means the expected share is exact (:func:`proportion_z`).

    >>> round(proportion_z_two_sample(600, 1000, 0.5, 1000), 3)
    4.495
    """
    if reference_size <= 0:
        return proportion_z(successes, trials, expected)
    if trials <= 0:
        return 0.0
    share = successes / trials
    pooled = (successes + expected * reference_size) / (trials + reference_size)
    pooled = min(max(pooled, 1e-6), 1 - 1e-6)
    return (share - expected) / math.sqrt(pooled * (1 - pooled) * (1 / trials + 1 / reference_size))
