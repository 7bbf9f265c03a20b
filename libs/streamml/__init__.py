"""streamml: the shared runtime of the streaming ML services.

Kafka client wrappers, the Avro codec, the exactly-once processing loop, the
changelog-backed state store, dead-letter routing, metrics/health and settings.
"""

from __future__ import annotations

__version__ = "0.1.0"
