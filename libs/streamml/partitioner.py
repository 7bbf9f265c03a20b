"""The one partitioner of keyed records: Kafka's default (murmur2 of the key).

Services join and merge by partition: the scorer writes ``predictions`` keyed by entity id,
upstream systems write ``labels`` keyed by entity id, and the performance service meets a
label with its prediction only if both landed in the same partition. librdkafka's default
partitioner (``consistent_random``, CRC-32) is not the Java client's (murmur2), so every
producer of the project sets :data:`PARTITIONER`, which is the Java client's default, and
a label producer in any language agrees with it by keeping its client's murmur2 default
(docs/decisions/performance-scale-out.md, "The partitioner").

>>> [partition_for(b"card-000001", 4), partition_for(b"card-000002", 4)]
[3, 2]
"""

from __future__ import annotations

PARTITIONER = "murmur2_random"  # librdkafka's name for the Java client's default partitioner

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of ``data`` (as ``org.apache.kafka.common.utils.Utils.murmur2``),
    as a signed int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length % 4
    if extra == 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (and librdkafka's ``murmur2_random``) sends
    a record with this non-empty key to."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
