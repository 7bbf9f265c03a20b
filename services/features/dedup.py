"""Idempotent keys: which event ids a partition has already turned into features.

The :class:`DedupStore` sits on the runtime's changelog-backed ``dedup`` store. Per
retained event it keeps one entry: key = 16-byte BLAKE2b digest of the event id, value =
the event time in whole minutes (4 bytes). Keys expire by *event time*: once the
partition's largest accepted event time has moved ``retention_ms`` past an event, its key
is deleted (a tombstone in the changelog). Expiry is driven by an in-memory index of
hour buckets, rebuilt from the store when a partition is assigned, so no full scan runs
per record. Equal values share one bytes object, which keeps a retained key at about
100 bytes of Python heap (see benchmarks/features.py and
docs/decisions/features-dedup-digest-keys.md).

The partition's largest accepted event time lives in the same store under a key that
cannot collide with a digest (it is not 16 bytes long).

>>> from streamml.state import State
>>> state = State(["dedup"]); state.store("dedup").assign(0)
>>> dedup = DedupStore(state.store("dedup"), retention_ms=60_000)
>>> key = dedup.digest("evt-1")
>>> dedup.seen(0, key)
False
>>> dedup.remember(0, key, 1_000); dedup.seen(0, key)
True
"""

from __future__ import annotations

import hashlib
import heapq
import struct

from streamml.state import KeyValueStore

DIGEST_BYTES = 16
PARTITION_MAX_KEY = b"\x00partition_max_event_time"
_MINUTES = struct.Struct("<I")
_MILLIS = struct.Struct("<q")
_MINUTE_MS = 60_000
_PERSON = b"streamml.dedup"
# Copying a keyed-up hasher is half the cost of building one with its parameters.
_HASHER = hashlib.blake2b(digest_size=DIGEST_BYTES, person=_PERSON)


class DedupStore:
    """Retained event-id digests of each partition, expiring by event time."""

    def __init__(
        self, store: KeyValueStore, *, retention_ms: int, bucket_ms: int = 3_600_000
    ) -> None:
        if retention_ms <= 0 or bucket_ms <= 0:
            raise ValueError("retention_ms and bucket_ms must be > 0")
        self._store = store
        self.retention_ms = retention_ms
        self._bucket_ms = bucket_ms
        # partition -> bucket number -> digests put in it; and a min-heap of bucket numbers.
        self._buckets: dict[int, dict[int, list[bytes]]] = {}
        self._heaps: dict[int, list[int]] = {}
        self._values: dict[int, bytes] = {}

    @staticmethod
    def digest(event_id: str) -> bytes:
        """The 16-byte key of an event id (collision odds: docs/decisions)."""
        hasher = _HASHER.copy()
        hasher.update(event_id.encode("utf-8"))
        return hasher.digest()

    # -- the processor's verbs --------------------------------------------------------

    def seen(self, partition: int, digest: bytes) -> bool:
        """True when ``digest`` was remembered in ``partition`` and has not expired."""
        return self._store.get(partition, digest) is not None

    def remember(self, partition: int, digest: bytes, event_time: int) -> None:
        """Mark an event as processed (pending until the transaction commits)."""
        minutes = max(event_time // _MINUTE_MS, 0)
        value = self._values.get(minutes)
        if value is None:
            if len(self._values) > 100_000:
                self._values.clear()
            value = self._values[minutes] = _MINUTES.pack(minutes)
        self._store.put(partition, digest, value)
        self._index(partition, digest, minutes * _MINUTE_MS)

    def partition_max(self, partition: int) -> int | None:
        """The largest accepted event time of ``partition`` (None before the first)."""
        # Read through the store every time: a cached copy could outlive a rolled-back write.
        raw = self._store.get(partition, PARTITION_MAX_KEY)
        return None if raw is None else int(_MILLIS.unpack(raw)[0])

    def advance(self, partition: int, event_time: int) -> int:
        """Raise the partition's event time to ``event_time`` and expire old keys.

        Returns the number of keys expired.
        """
        current = self.partition_max(partition)
        if current is not None and event_time <= current:
            return 0
        self._store.put(partition, PARTITION_MAX_KEY, _MILLIS.pack(event_time))
        return self._expire(partition, event_time - self.retention_ms)

    # -- the runtime's hooks ----------------------------------------------------------

    def rebuild(self, partition: int) -> None:
        """Index the keys restored for ``partition`` (call on assignment)."""
        self._buckets.pop(partition, None)
        self._heaps.pop(partition, None)
        for key, value in self._store.items(partition):
            if len(key) == DIGEST_BYTES and len(value) == _MINUTES.size:
                self._index(partition, key, _MINUTES.unpack(value)[0] * _MINUTE_MS)

    def forget(self, partition: int) -> None:
        """Drop the index of a revoked partition."""
        self._buckets.pop(partition, None)
        self._heaps.pop(partition, None)

    def retained(self, partition: int | None = None) -> int:
        """Indexed keys (of one partition or all); approximate after an abort."""
        parts = [partition] if partition is not None else list(self._buckets)
        return sum(len(d) for p in parts for d in self._buckets.get(p, {}).values())

    # -- internals --------------------------------------------------------------------

    def _index(self, partition: int, digest: bytes, event_time: int) -> None:
        bucket = event_time // self._bucket_ms
        buckets = self._buckets.setdefault(partition, {})
        keys = buckets.get(bucket)
        if keys is None:
            keys = buckets[bucket] = []
            heapq.heappush(self._heaps.setdefault(partition, []), bucket)
        keys.append(digest)

    def _expire(self, partition: int, cutoff: int) -> int:
        heap = self._heaps.get(partition)
        if not heap:
            return 0
        buckets = self._buckets[partition]
        expired = 0
        # A bucket goes when its newest possible event time is older than the cutoff.
        while heap and (heap[0] + 1) * self._bucket_ms <= cutoff:
            bucket = heapq.heappop(heap)
            for digest in buckets.pop(bucket, ()):
                self._store.delete(partition, digest)
                expired += 1
        return expired
