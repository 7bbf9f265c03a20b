"""Helpers for tests against the real broker: see :mod:`streamml.testkit` (where they live,
so that benchmarks/ can use them without importing tests/)."""

from __future__ import annotations

from streamml.testkit import (
    ROOT,
    ServiceProcess,
    consume_all,
    create_topics,
    free_port,
    metric_total,
    produce,
    wait_until,
)

__all__ = [
    "ROOT",
    "ServiceProcess",
    "consume_all",
    "create_topics",
    "free_port",
    "metric_total",
    "produce",
    "wait_until",
]
