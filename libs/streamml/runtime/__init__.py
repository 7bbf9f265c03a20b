"""The exactly-once consume-transform-produce loop every service runs on (KIP-447).

One loop owns all Kafka I/O: it polls a micro-batch (bounded by count and time) with a
``read_committed`` consumer, decodes it, hands it to the service's pure
:class:`~streamml.processor.Processor`, and in ONE transaction of a transactional producer
writes the outputs, the dead letters, the state-changelog changes and the input offsets
(``send_offsets_to_transaction`` with the consumer's group metadata). Either all of that
becomes visible to ``read_committed`` readers, or none of it does.

The package is split along its seams:

- :mod:`~streamml.runtime.executor`: the Kafka-free batch executor (decode, process,
  isolate the failing record, encode, dead letters);
- :mod:`~streamml.runtime.transactions`: the transaction driver (the transactional
  producer: begin, produce, send offsets, commit, abort);
- :mod:`~streamml.runtime.clients`: construction of the Kafka clients;
- :mod:`~streamml.runtime.provisioning`: the topics a service needs, state restore;
- :mod:`~streamml.runtime.loop`: :class:`StreamRuntime`, the loop that ties them together.
"""

from __future__ import annotations

from streamml.runtime.executor import (
    BatchExecutor,
    BatchOutcome,
    DeadLetter,
    EncodedOutput,
    Polled,
    next_offsets,
)
from streamml.runtime.loop import StreamRuntime

__all__ = [
    "BatchExecutor",
    "BatchOutcome",
    "DeadLetter",
    "EncodedOutput",
    "Polled",
    "StreamRuntime",
    "next_offsets",
]
