"""Shared helpers of the deployment tests: repository paths and the metric names the code
defines (found in the sources, so a renamed metric breaks the dashboards' tests)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

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


def kustomize_command() -> list[str] | None:
    """A kustomize to render with: KUSTOMIZE, kustomize on PATH, the one `make kustomize`
    installs (~/.cache/streamml/bin), or kubectl's built-in one; None when there is none."""
    import os
    import shutil

    cache = Path(os.environ.get("STREAMML_CACHE_DIR") or Path.home() / ".cache" / "streamml")
    for candidate in (os.environ.get("KUSTOMIZE"), shutil.which("kustomize"),
                      str(cache / "bin" / "kustomize")):  # fmt: skip
        if candidate and Path(candidate).is_file():
            return [candidate, "build"]
    kubectl = shutil.which("kubectl")
    return [kubectl, "kustomize"] if kubectl else None


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The manifests ``kustomize build folder`` renders (skips the test without kustomize)."""
    import subprocess

    import pytest
    import yaml

    command = kustomize_command()
    if command is None:
        pytest.skip("kustomize not found: `make kustomize` installs it with go")
    result = subprocess.run([*command, str(folder)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
