"""FeatureVector records of a whole batch in one call, framed the way the codec frames them.

The runtime encodes every :class:`~streamml.processor.Output` with the codec, a few
microseconds a record. The features service writes the same bytes faster: the fields
that repeat (feature set name, version, hash, names) are encoded once, each distinct
categories map once per batch, and the C kernel (``services.features._native``) lays out
each record around the row of the batch's float64 matrix. The bytes must be the codec's:
:meth:`VectorWriter.bind` encodes a sample vector with the codec and with this writer and
keeps the writer only if the two agree (taking the codec's framing - single-object
header or schema-registry id - from that sample); otherwise, or without the C kernel,
the outputs go to the codec as before. tests/unit/features/test_native.py compares them
on generated vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from services.features import native
from streamml.codec import AvroCodec, encode_long, encode_string
from streamml.errors import InfrastructureError

log = logging.getLogger(__name__)

FEATURE_VECTOR_SCHEMA = "FeatureVector"
_MAPS_KEPT = 65_536


def avro_string_map(mapping: Mapping[str, str]) -> bytes:
    """A map of strings in iteration order, as one block (how the codec writes it)."""
    if not mapping:
        return b"\x00"
    body = b"".join(encode_string(k) + encode_string(v) for k, v in mapping.items())
    return encode_long(len(mapping)) + body + b"\x00"


def avro_string_array(items: Sequence[str]) -> bytes:
    if not items:
        return b"\x00"
    return encode_long(len(items)) + b"".join(encode_string(s) for s in items) + b"\x00"


class VectorWriter:
    """Writes a batch's FeatureVector records (one feature set, one topic)."""

    def __init__(
        self, *, feature_set: str, version: str, content_hash: str, names: Sequence[str]
    ) -> None:
        self._middle = (
            encode_string(feature_set)
            + encode_string(version)
            + encode_string(content_hash)
            + avro_string_array(names)
        )
        self._header = b""
        self._maps: dict[int, tuple[Mapping[str, str], bytes]] = {}

    def encode(  # noqa: PLR0917 (one call per batch, the columns in schema order)
        self,
        event_ids: list[str],
        entity_ids: list[str],
        event_times: list[int],
        computed_at: int,
        matrix: np.ndarray[Any, Any],
        categories: Sequence[Mapping[str, str]],
    ) -> list[bytes] | None:
        """The framed records, or None when some value is not for this writer.

        A categories map is encoded the first time its dict is seen: pass dicts that do
        not change afterwards (as :meth:`FeatureSet.categories_many` returns them).
        """
        kernel = native.KERNEL
        if kernel is None:
            return None
        # The maps repeat as the very same dicts (FeatureSet.categories_many shares them):
        # each is encoded once. The entry keeps its dict alive, so its id is not reused.
        memo = self._maps
        if len(memo) > _MAPS_KEPT:
            memo.clear()
        tails = []
        for mapping in categories:
            entry = memo.get(id(mapping))
            if entry is None or entry[0] is not mapping:
                entry = memo[id(mapping)] = (mapping, avro_string_map(mapping))
            tails.append(entry[1])
        return kernel.encode_vectors(  # type: ignore[no-any-return]
            self._header, event_ids, entity_ids, event_times, computed_at, self._middle,
            matrix, tails,
        )  # fmt: skip

    @classmethod
    def bind(
        cls,
        codec: AvroCodec,
        topic: str,
        *,
        feature_set: str,
        version: str,
        content_hash: str,
        names: Sequence[str],
    ) -> VectorWriter | None:
        """A writer whose records equal ``codec.encode`` on ``topic``, or None.

        Raises :class:`~streamml.errors.InfrastructureError` when the codec cannot reach
        the schema registry: that says nothing about the writer, so it is not a None.
        """
        if native.KERNEL is None:
            return None
        writer = cls(
            feature_set=feature_set, version=version, content_hash=content_hash, names=names
        )
        sample: dict[str, Any] = {
            "event_id": "evt-\u00e9-1",
            "entity_id": "entity-42",
            "event_time": 1_700_000_000_123,
            "computed_at": 1_700_000_000_456,
            "feature_set": feature_set,
            "feature_set_version": version,
            "feature_set_hash": content_hash,
            "names": tuple(names),
            "values": np.linspace(-1.5, 1e6, len(names) or 3),
            "categories": {"country": "DE", "channel": "pos"},
        }
        try:
            expected = codec.encode(FEATURE_VECTOR_SCHEMA, sample, topic=topic)
        except InfrastructureError:
            raise  # the registry is down: the caller binds again once it answers
        except Exception as exc:
            log.warning(
                "FeatureVector writer not used: the codec could not encode a sample: %s", exc
            )
            return None
        body = writer.encode(
            [sample["event_id"]], [sample["entity_id"]], [sample["event_time"]],
            sample["computed_at"], sample["values"].reshape(1, -1), [sample["categories"]],
        )  # fmt: skip
        if body is None or not expected.endswith(body[0]):
            log.warning("FeatureVector writer not used: its bytes differ from the codec's")
            return None
        writer._header = expected[: len(expected) - len(body[0])]
        return writer
