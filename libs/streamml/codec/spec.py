"""Avro type names and value ranges, from the Avro specification."""

from __future__ import annotations

_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)
_PRIMITIVES = frozenset(("null", "boolean", "int", "long", "float", "double", "bytes", "string"))
_COMPLEX = frozenset(("record", "error", "enum", "fixed", "array", "map"))
