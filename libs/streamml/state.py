"""Keyed state stores with transactional changes, backed by compacted changelog topics.

A store holds ``bytes -> bytes`` per input partition. Writes made while a micro-batch is
processed are pending: the runtime writes them to the changelog topic inside the same
Kafka transaction as the outputs and offsets, and only then applies them (``commit``);
an aborted transaction discards them (``abort``), so in-memory state always equals what
the committed changelog says. Values are bytes on purpose: each service serializes its
state explicitly, so state loaded from Kafka can never execute code (no pickle).

>>> state = State(["counts"])
>>> counts = state.store("counts")
>>> counts.assign(0)  # the runtime does this when partition 0 is assigned
>>> counts.put(0, b"k", b"1")
>>> counts.get(0, b"k")
b'1'
>>> state.abort()
>>> counts.get(0, b"k") is None
True
>>> counts.put(0, b"k", b"2")
>>> state.commit()
>>> counts.get(0, b"k")
b'2'
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from streamml.errors import StreamMLError
from streamml.memory import settle_table

_DELETED = None
SETTLE_MIN_KEYS = 50_000  # a smaller table (under ~5 MiB): its later resize is not worth a pass


class KeyValueStore:
    """One named store, partitioned like the input topic."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._base: dict[int, dict[bytes, bytes]] = {}
        # Pending change layers, innermost last; each maps (partition, key) -> value or
        # None for a delete. Layer 0 is the open transaction; more layers are savepoints.
        self._layers: list[dict[tuple[int, bytes], bytes | None]] = [{}]

    # -- the processor's verbs ------------------------------------------------------

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The current value of ``key`` in ``partition``, pending changes included."""
        for layer in reversed(self._layers):
            if layer:
                found = layer.get((partition, key), self)
                if found is not self:
                    return found  # type: ignore[return-value]
        base = self._base.get(partition)
        return None if base is None else base.get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value`` (pending until the transaction commits)."""
        if partition not in self._base:
            raise StreamMLError(
                f"store {self.name!r}: partition {partition} is not assigned to this instance"
            )
        self._layers[-1][(partition, key)] = value

    def delete(self, partition: int, key: bytes) -> None:
        """Remove ``key`` (a tombstone in the changelog)."""
        if partition not in self._base:
            raise StreamMLError(
                f"store {self.name!r}: partition {partition} is not assigned to this instance"
            )
        self._layers[-1][(partition, key)] = _DELETED

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of ``partition``, pending changes included."""
        merged: dict[bytes, bytes | None] = dict(self._base.get(partition, {}))
        for layer in self._layers:
            for (part, key), value in layer.items():
                if part == partition:
                    merged[key] = value
        for key, value in merged.items():
            if value is not None:
                yield key, value

    def partitions(self) -> list[int]:
        """The partitions whose state this instance holds."""
        return sorted(self._base)

    def size(self, partition: int | None = None) -> int:
        """Committed keys in one partition, or in all."""
        if partition is not None:
            return len(self._base.get(partition, {}))
        return sum(len(part) for part in self._base.values())

    # -- the runtime's verbs --------------------------------------------------------

    def assign(self, partition: int) -> None:
        self._base.setdefault(partition, {})

    def restore(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Apply one changelog record during restore."""
        base = self._base.setdefault(partition, {})
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value

    def settle(self, partition: int) -> int:
        """After a restore: size the partition's table as churn would (memory.settle_table).

        Only a large table is worth it (a step of RSS long after the restore); returns the
        keys moved, 0 for a small one.
        """
        base = self._base.get(partition)
        if base is None or len(base) < SETTLE_MIN_KEYS:
            return 0
        return settle_table(base)

    def drop(self, partition: int) -> None:
        """Forget a revoked partition."""
        self._base.pop(partition, None)
        for layer in self._layers:
            for part_key in [pk for pk in layer if pk[0] == partition]:
                del layer[part_key]

    def pending(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """Changes of the open transaction, savepoints flattened."""
        if len(self._layers) == 1:
            merged = self._layers[0]  # no savepoint open: nothing to flatten
        else:
            merged = {}
            for layer in self._layers:
                merged.update(layer)
        for (partition, key), value in merged.items():
            yield partition, key, value

    def commit(self) -> None:
        for partition, key, value in list(self.pending()):
            base = self._base.get(partition)
            if base is None:
                continue  # revoked while pending: the new owner has it now
            if value is None:
                base.pop(key, None)
            else:
                base[key] = value
        self._layers = [{}]

    def abort(self) -> None:
        self._layers = [{}]

    def savepoint(self) -> int:
        self._layers.append({})
        return len(self._layers) - 1

    def release(self, savepoint: int) -> None:
        """Keep the changes made since ``savepoint`` (merge them into the layer below)."""
        while len(self._layers) > savepoint:
            top = self._layers.pop()
            self._layers[-1].update(top)

    def rollback(self, savepoint: int) -> None:
        """Discard the changes made since ``savepoint``."""
        del self._layers[savepoint:]


class State:
    """The stores of one processor, as the runtime hands them to it."""

    def __init__(self, names: Iterable[str]) -> None:
        self._stores = {name: KeyValueStore(name) for name in names}

    def store(self, name: str) -> KeyValueStore:
        try:
            return self._stores[name]
        except KeyError:
            raise StreamMLError(
                f"no state store {name!r}; declare it in the processor's `stores`"
            ) from None

    @property
    def stores(self) -> Sequence[KeyValueStore]:
        return tuple(self._stores.values())

    def commit(self) -> None:
        for store in self._stores.values():
            store.commit()

    def abort(self) -> None:
        for store in self._stores.values():
            store.abort()

    def savepoint(self) -> list[int]:
        return [store.savepoint() for store in self._stores.values()]

    def settle(self, partitions: Iterable[int]) -> None:
        """After a restore of ``partitions``: every store's large tables sized as churn would."""
        for number in partitions:
            for store in self._stores.values():
                store.settle(number)

    def release(self, savepoint: list[int]) -> None:
        for store, point in zip(self._stores.values(), savepoint, strict=True):
            store.release(point)

    def rollback(self, savepoint: list[int]) -> None:
        for store, point in zip(self._stores.values(), savepoint, strict=True):
            store.rollback(point)
