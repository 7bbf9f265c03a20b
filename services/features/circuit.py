"""The features service's data-quality fail-stop circuit: the shared one of the runtime.

It lives in :mod:`streamml.circuit`, where the runtime's dead-letter-rate circuit uses it
too; this name stays for the features code and its tests.
"""

from __future__ import annotations

from streamml.circuit import CircuitState, FailStopCircuit

__all__ = ["CircuitState", "FailStopCircuit"]
