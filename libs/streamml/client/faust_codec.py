"""faust-streaming support: a codec that reads the project's Avro into typed values.

Needs the ``faust`` extra (``pip install 'streamml[faust]'``). A faust agent declares

    app.topic("predictions", value_type=Prediction, value_serializer=avro(Prediction))

and gets :class:`~streamml.client.values.Prediction` instances. faust-streaming reads
with ``isolation_level="read_committed"`` only when the app runs with
``processing_guarantee="exactly_once"``; otherwise it also delivers records of aborted
transactions (docs/consumers.md).
"""

from __future__ import annotations

from typing import Any

from faust.serializers.codecs import Codec

from streamml.client.base import AvroValue
from streamml.codec import AvroCodec
from streamml.settings import KafkaSettings


class AvroValueCodec(Codec):
    """faust codec: the project's Avro (either wire format) <-> ``value_type``.

    Loading returns the decoded dict, which faust turns into ``value_type`` through its
    ``from_data`` hook; dumping writes the single-object encoding (a registry needs a
    topic name, which a faust codec is not given).
    """

    def __init__(
        self, value_type: type[AvroValue], codec: AvroCodec | None = None, **kwargs: Any
    ) -> None:
        super().__init__(value_type=value_type, codec=codec, **kwargs)
        self._value_type = value_type
        self._codec = codec if codec is not None else AvroCodec.from_settings(KafkaSettings())

    def _loads(self, s: bytes) -> Any:
        return self._codec.decode(s, self._value_type.schema_name())

    def _dumps(self, s: Any) -> bytes:
        value = s.to_avro() if isinstance(s, AvroValue) else s
        return self._codec.encode(self._value_type.schema_name(), value)


def avro(value_type: type[AvroValue], codec: AvroCodec | None = None) -> AvroValueCodec:
    """The faust ``value_serializer`` for topics of ``value_type``."""
    return AvroValueCodec(value_type, codec)
