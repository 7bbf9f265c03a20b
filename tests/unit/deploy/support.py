"""Shared helpers of the deployment tests: repository paths and the metric names the code
defines (found in the sources, so a renamed metric breaks the dashboards' tests)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "k8s" / "monitoring"

_DEFINITION = re.compile(
    r"""(?:Counter|Gauge|Histogram|Summary|GaugeMetricFamily|CounterMetricFamily)\(\s*["']"""
    r"""(streamml_[a-z0-9_]+)["']""",
    re.S,
)
_HISTOGRAM = re.compile(r"""Histogram\(\s*["'](streamml_[a-z0-9_]+)["']""", re.S)


@cache
def defined_metrics() -> frozenset[str]:
    """Every ``streamml_*`` sample name the code can export (histogram series included)."""
    names: set[str] = set()
    for folder in ("libs", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            names.update(_DEFINITION.findall(text))
            for histogram in _HISTOGRAM.findall(text):
                names.update(f"{histogram}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return frozenset(names)


_IDENTIFIER = re.compile(r"\b(streamml_[a-z0-9_]+)\b")


def metrics_in(expression: str) -> set[str]:
    """The ``streamml_*`` metric names a PromQL expression reads."""
    return set(_IDENTIFIER.findall(expression))
