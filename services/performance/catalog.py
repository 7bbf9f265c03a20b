"""Model routes and segment values as small per-partition ids, and the groups a prediction
counts in (all traffic of its model route, and one group per segment field).

Ids are what the state stores hold (two bytes instead of the names); the names live in the
partition's ``meta`` store and are reported by name, so ids may differ between partitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.performance.partitions import PartitionStores, PartitionView
from services.performance.state_layout import (
    MISSING_NAME,
    MODEL_LEVEL,
    OTHER,
    OTHER_NAME,
    Group,
    encode_model,
    model_key,
    segment_key,
)
from streamml.errors import StreamMLError

_MAX_MODEL_ID = 0xFFFF
_GROUP_CACHE_SIZE = 100_000


class Catalog:
    """Interns model routes and segment values into a partition's view and ``meta`` store."""

    def __init__(self, stores: PartitionStores, fields: list[str], *, track_values: int) -> None:
        self._stores = stores
        self._fields = fields
        self._track_values = track_values
        self._group_cache: dict[tuple[int, tuple[int, ...]], list[Group]] = {}

    def model_id(self, view: PartitionView, value: Mapping[str, Any]) -> int:
        """The id of the prediction's model route (its latest threshold kept)."""
        key = (str(value["model_name"]), str(value["model_version"]), str(value["route"]))
        threshold = float(value["threshold"])
        model_id = view.model_ids.get(key)
        if model_id is None:
            model_id = len(view.models)
            if model_id > _MAX_MODEL_ID:
                raise StreamMLError("performance: more than 65535 model routes in one partition")
            view.models.append([*key, threshold])
            view.model_ids[key] = model_id
        elif view.models[model_id][3] == threshold:
            return model_id
        view.models[model_id][3] = threshold
        self._stores.meta.put(view.partition, model_key(model_id),
                              encode_model(view.models[model_id]))  # fmt: skip
        return model_id

    def segment_ids(self, view: PartitionView, value: Mapping[str, Any]) -> tuple[int, ...]:
        """The prediction's value id per segment field (OTHER past the tracked values)."""
        if not self._fields:
            return ()
        given = value.get("segments") or {}
        ids = []
        for index, name in enumerate(self._fields):
            seg = given.get(name)
            seg = MISSING_NAME if seg is None else str(seg)
            known = view.segment_ids[index]
            value_id = known.get(seg)
            if value_id is None:
                if seg == OTHER_NAME or len(known) >= self._track_values:
                    value_id = OTHER
                else:
                    value_id = len(known) + 1
                    known[seg] = value_id
                    view.segment_names[index][value_id] = seg
                    self._stores.meta.put(view.partition, segment_key(index, value_id),
                                          seg.encode())  # fmt: skip
            ids.append(value_id)
        return tuple(ids)

    def groups(self, model_id: int, segments: tuple[int, ...]) -> list[Group]:
        """The all-traffic group and one group per segment field (shared, immutable)."""
        key = (model_id, segments)
        groups = self._group_cache.get(key)
        if groups is None:
            groups = [(model_id, MODEL_LEVEL, 0)]
            groups += [(model_id, index, value_id) for index, value_id in enumerate(segments)]
            if len(self._group_cache) < _GROUP_CACHE_SIZE:
                self._group_cache[key] = groups
        return groups
