"""The base of every typed topic value (:mod:`streamml.client.values`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self


class AvroValue:
    """A typed Avro record: built from the codec's dict, turned back into one."""

    __slots__ = ()
    SCHEMA: ClassVar[str]  # full record name, e.g. "streamml.Prediction"

    @classmethod
    def from_avro(cls, value: Mapping[str, Any]) -> Self:
        """The typed value of a decoded record (the codec's dict)."""
        raise NotImplementedError

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec encodes it (plain dicts and lists)."""
        raise NotImplementedError

    @classmethod
    def schema_name(cls) -> str:
        """The record name without namespace: the codec's schema name (``Prediction``)."""
        return cls.SCHEMA.rsplit(".", 1)[-1]

    @classmethod
    def from_data(cls, data: Any, *, preferred_type: Any = None) -> Self:
        """faust-streaming's hook for a ``value_type``: an instance, or the decoded dict."""
        return data if isinstance(data, cls) else cls.from_avro(data)
