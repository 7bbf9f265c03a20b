"""Typed readers of the system's topics: the supported API for downstream consumers.

* :mod:`streamml.client.values`: one frozen dataclass per topic value (``Prediction``,
  ``DriftAlert``, ``PerformanceReport``, ...), generated from ``schemas/``;
* :class:`Reader`: synchronous, on confluent-kafka; :class:`AsyncReader`: asyncio, on
  aiokafka. Both read committed records only, commit after the caller has handled a
  record, pause and resume, put the configured topic prefix before the logical name, and
  read both wire formats (single-object by default, the registry's with a registry URL);
* :class:`ValueDeserializer`: bytes -> typed value, for any other Kafka client;
* :mod:`streamml.client.faust_codec`: faust-streaming (the ``faust`` extra).

docs/consumers.md has a complete consumer for each.
"""

from __future__ import annotations

from streamml.client.aio import AsyncReader
from streamml.client.base import AvroValue
from streamml.client.reader import Reader
from streamml.client.records import ConsumedRecord, ValueDeserializer
from streamml.client.values import (
    VALUE_TYPES,
    DriftAlert,
    DriftWindowReport,
    Event,
    FeatureVector,
    Label,
    ModelControl,
    PerformanceReport,
    Prediction,
    SloAlert,
)

__all__ = [
    "VALUE_TYPES",
    "AsyncReader",
    "AvroValue",
    "ConsumedRecord",
    "DriftAlert",
    "DriftWindowReport",
    "Event",
    "FeatureVector",
    "Label",
    "ModelControl",
    "PerformanceReport",
    "Prediction",
    "Reader",
    "SloAlert",
    "ValueDeserializer",
]
