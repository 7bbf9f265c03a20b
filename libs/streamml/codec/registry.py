"""The schema registry client (Confluent wire format): connect, register, fetch writers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from streamml.codec.catalog import _load_version, _SchemaVersion, _short
from streamml.errors import (
    DecodeError,
    RegistryRefusedError,
    RegistryUnavailableError,
    SchemaError,
)

if TYPE_CHECKING:
    from streamml.settings import KafkaSettings


_REGISTRY_TIMEOUT_S = 10


def _registry_fault(exc: Exception, doing: str) -> SchemaError:
    """The typed error for a failed registry call: unavailable (retry) or refused (fix)."""
    status = getattr(exc, "http_status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        # 409 (incompatible schema), 401/403 (credentials), 422 (invalid schema): waiting
        # does not change the answer.
        if status in (401, 403):
            setting, fix = "STREAMML_KAFKA_SCHEMA_REGISTRY_BASIC_AUTH", "check the credentials"
        elif status == 409:
            setting = None
            fix = "make the schema in schemas/ compatible or change the subject's compatibility"
        else:
            setting, fix = None, "check the schema and the registry"
        return RegistryRefusedError(
            _short(f"schema registry refused ({doing}): {exc}") + f"; {fix}", setting=setting
        )
    return RegistryUnavailableError(_short(f"schema registry unavailable ({doing}): {exc}"))


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
    config = kafka.registry_client_config()  # basic auth and TLS (CA, client certificate)
    # httpx (under the registry client) waits forever without a timeout: a registry that
    # hangs must fail the call, so the runtime retries instead of freezing.
    config.setdefault("timeout", _REGISTRY_TIMEOUT_S)
    return config


def register_schema(client: Any, subject: str, writer: _SchemaVersion) -> int:
    """Register ``writer`` under ``subject`` (or find it registered): its schema id."""
    from confluent_kafka.schema_registry import Schema  # lazy: optional extra

    try:
        schema_id = int(
            client.register_schema(subject, Schema(json.dumps(writer.definition), "AVRO"))
        )
    except Exception as exc:
        doing = f"cannot register {writer.name} under subject {subject}"
        raise _registry_fault(exc, doing) from exc
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
        raise _registry_fault(exc, f"looking up schema id {schema_id}") from exc
    except Exception as exc:
        raise _registry_fault(exc, f"looking up schema id {schema_id}") from exc
    if (registered.schema_type or "AVRO") != "AVRO":
        raise DecodeError(f"schema id {schema_id} is {registered.schema_type}, not Avro")
    try:
        writer = _load_version(
            json.loads(registered.schema_str), f"id {schema_id}", f"registry id {schema_id}"
        )
    except (ValueError, SchemaError) as exc:
        raise DecodeError(_short(f"schema id {schema_id} is not usable: {exc}")) from exc
    return writer
