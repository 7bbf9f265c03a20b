"""The fault-injecting proxy in front of the real schema registry does what it says, so
fault tests that use it (registry down mid-stream, registry refusing a schema) can trust it."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streamml.tls import LocalCA
from tests.conftest import RegistryEndpoint
from tests.faultproxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.registry]


def _schema(field: str) -> Schema:
    record = {"type": "record", "name": "Probe", "fields": [{"name": field, "type": "long"}]}
    return Schema(json.dumps(record), "AVRO")


def test_the_proxy_passes_refuses_registrations_and_goes_down_on_command(
    schema_registry: RegistryEndpoint,
) -> None:
    proxy = FaultProxy.for_url(
        schema_registry.url, tls=LocalCA(schema_registry.ca_path.parent)
    ).start()
    try:

        def client() -> SchemaRegistryClient:  # a fresh one: no cached answers
            return SchemaRegistryClient(
                {
                    "url": proxy.url,
                    "ssl.ca.location": str(schema_registry.ca_path),
                    "max.retries": 0,
                }
            )

        subject = f"probe-{uuid.uuid4().hex[:8]}-value"
        schema_id = client().register_schema(subject, _schema("a"))
        assert client().get_schema(schema_id).schema_str == _schema("a").schema_str

        proxy.refuse_registrations()
        with pytest.raises(SchemaRegistryError) as refused:
            client().register_schema(subject, _schema("b"))
        assert refused.value.http_status_code == 409
        assert proxy.injected["conflict"] == 1
        assert subject in client().get_subjects()  # reads still reach the registry

        proxy.down()
        with pytest.raises(Exception) as down:  # httpx's connection error, not an answer
            client().get_subjects()
        assert not isinstance(down.value, SchemaRegistryError)
        assert proxy.injected["refused_connection"] >= 1

        proxy.up()
        assert client().register_schema(subject, _schema("b")) != schema_id
    finally:
        proxy.stop()
