"""The schema registry client (Confluent wire format): connect, register, fetch writers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from streamml.codec.catalog import _load_version, _SchemaVersion, _short
from streamml.errors import DecodeError, SchemaError

if TYPE_CHECKING:
    from streamml.settings import KafkaSettings


def _registry_client(url: str, config: dict[str, Any]) -> Any:
    try:
        from confluent_kafka.schema_registry import (  # lazy: optional extra, heavy
            SchemaRegistryClient,
        )
    except ImportError as exc:  # the [schemaregistry] extra of confluent-kafka
        raise SchemaError(
            f"schema registry support needs confluent-kafka[schemaregistry]: {exc}"
        ) from exc
    conf = {**config, "url": url}
    try:
        # new_client() returns the in-memory MockSchemaRegistryClient for mock:// URLs.
        factory = getattr(SchemaRegistryClient, "new_client", SchemaRegistryClient)
        return factory(conf)
    except Exception as exc:
        raise SchemaError(_short(f"schema registry settings: {exc}")) from exc


def registry_config(kafka: KafkaSettings) -> dict[str, Any]:
    """The registry client's settings (beside its URL) taken from the Kafka settings."""
    return kafka.registry_client_config()  # basic auth and TLS (CA, client certificate)


def register_schema(client: Any, subject: str, writer: _SchemaVersion) -> int:
    """Register ``writer`` under ``subject`` (or find it registered): its schema id."""
    from confluent_kafka.schema_registry import Schema  # lazy: optional extra

    try:
        schema_id = int(
            client.register_schema(subject, Schema(json.dumps(writer.definition), "AVRO"))
        )
    except Exception as exc:
        raise SchemaError(
            _short(f"cannot register {writer.name} under subject {subject}: {exc}")
        ) from exc
    return schema_id


def fetch_writer(client: Any, schema_id: int) -> _SchemaVersion:
    """The writer schema registered as ``schema_id``, parsed (DecodeError: not usable)."""
    from confluent_kafka.schema_registry.error import (  # lazy: optional extra
        SchemaRegistryError,
    )

    try:
        registered = client.get_schema(schema_id)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            raise DecodeError(f"schema id {schema_id} is not in the registry") from exc
        raise SchemaError(_short(f"schema registry: {exc}")) from exc
    except Exception as exc:
        raise SchemaError(_short(f"schema registry unreachable: {exc}")) from exc
    if (registered.schema_type or "AVRO") != "AVRO":
        raise DecodeError(f"schema id {schema_id} is {registered.schema_type}, not Avro")
    try:
        writer = _load_version(
            json.loads(registered.schema_str), f"id {schema_id}", f"registry id {schema_id}"
        )
    except (ValueError, SchemaError) as exc:
        raise DecodeError(_short(f"schema id {schema_id} is not usable: {exc}")) from exc
    return writer
