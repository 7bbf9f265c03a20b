"""A faust-streaming worker of the consumer tests: one agent per topic named on the command
line (``logical-topic=ValueType``), each printing ``<logical topic> <value as JSON>`` per
record. The codec comes from ``STREAMML_KAFKA_*`` (a registry when its URL is set), as a
downstream faust app builds it.

Run: python faust_reader_app.py APP_ID drift.alerts=DriftAlert registry.predictions=Prediction
"""

from __future__ import annotations

import json
import sys
from typing import Any

import faust

from streamml import client
from streamml.client.faust_codec import avro
from streamml.settings import KafkaSettings

app_id, *wanted = sys.argv[1:]
sys.argv[1:] = ["worker", "-l", "warn"]
kafka = KafkaSettings()
app = faust.App(app_id, broker=f"kafka://{kafka.bootstrap_servers}", web_enabled=False)


def _agent(logical: str, value_type: type[Any]) -> None:
    topic = app.topic(
        kafka.topic(logical), value_type=value_type, value_serializer=avro(value_type)
    )

    async def show(stream: Any) -> None:
        async for value in stream:
            assert isinstance(value, value_type), type(value)
            # One string per print: faust logs what an agent prints, one line per write.
            print(f"{logical} {json.dumps(value.to_avro(), sort_keys=True)}", flush=True)

    app.agent(topic, name=f"show-{logical}")(show)


for spec in wanted:
    name, _, type_name = spec.partition("=")
    _agent(name, getattr(client, type_name))

if __name__ == "__main__":
    app.main()
