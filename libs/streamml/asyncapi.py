"""The AsyncAPI 3.0 document of every topic, built from topics.yaml and schemas/.

``streamml asyncapi`` prints it (or writes or checks ``docs/asyncapi.yaml``). Channels are
addressed ``{prefix}<topic>`` with the deployment's prefix as a parameter; message payloads
are the Avro schemas as written (docs and logical types included); keys and the ``dlq.*``,
``redrive.*`` and ``replay.*`` headers are described; one operation per topic and party
says who sends (publishes) and who receives (subscribes).
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import yaml

from streamml import __version__
from streamml.codec import AvroCodec
from streamml.deadletter import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_REDRIVE_AT,
    H_REDRIVE_ATTEMPT,
    H_REDRIVE_ID,
    H_REDRIVE_SOURCE,
    H_SERVICE,
    H_SOURCE_OFFSET,
    H_SOURCE_PARTITION,
    H_SOURCE_TIMESTAMP,
    H_SOURCE_TOPIC,
    H_STAGE,
    H_TIMESTAMP,
)
from streamml.errors import ConfigError

AVRO_FORMAT = "application/vnd.apache.avro;version=1.9.0"
_REPLAY_HEADERS = {
    "replay.id": "Id of the operator replay that copied this record (streamml replay).",
    "replay.source": "Where the record was copied from: topic/partition/offset.",
    "replay.at": "When it was replayed, epoch milliseconds.",
}
_REDRIVE_HEADERS = {
    H_REDRIVE_ID: "Id of the redrive that sent this dead letter back (streamml dlq redrive).",
    H_REDRIVE_ATTEMPT: "The dead letter's dlq.attempt.",
    H_REDRIVE_SOURCE: "The dead letter it came from: dlq topic/partition/offset.",
    H_REDRIVE_AT: "When it was redriven, epoch milliseconds.",
}
_DLQ_HEADERS = {
    H_ERROR_CLASS: "Class of the error that made the record a dead letter.",
    H_ERROR_MESSAGE: "The error's message.",
    H_SERVICE: "Service that dead-lettered it.",
    H_STAGE: "Stage that failed: decode, validate or process.",
    H_SOURCE_TOPIC: "Topic the record was read from.",
    H_SOURCE_PARTITION: "Its partition.",
    H_SOURCE_OFFSET: "Its offset.",
    H_SOURCE_TIMESTAMP: "Its timestamp, epoch milliseconds.",
    H_TIMESTAMP: "When it was dead-lettered, epoch milliseconds.",
    H_ATTEMPT: "How many times it has failed (1, then redrive.attempt + 1).",
}
_PARTIES = {
    "producers": "Upstream systems that publish events and labels.",
    "consumers": "Downstream readers (any language; Python: streamml.client).",
    "operators": "Operator tools (the streamml CLI: dlq, replay, scorer promote).",
    "features": "The features service.",
    "scorer": "The scorer service.",
    "drift": "The drift service.",
    "performance": "The performance service.",
}


def _headers(names: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Kafka record headers (UTF-8 string values). Replayed or redriven "
        "records carry the replay.* or redrive.* ones; other headers may be present.",
        "properties": {name: {"type": "string", "description": doc} for name, doc in names.items()},
    }


def build_document(
    codec: AvroCodec | None = None, topics_yaml: str | None = None
) -> dict[str, Any]:
    """The AsyncAPI document as a dict (YAML/JSON-ready, keys in a stable order)."""
    codec = codec or AvroCodec()
    text = topics_yaml or (resources.files("streamml") / "topics.yaml").read_text()
    declared = yaml.safe_load(text)
    topics: dict[str, Any] = declared.get("topics") or {}
    contracts: dict[str, Any] = declared.get("contracts") or {}
    missing = sorted(set(topics) - set(contracts))
    if missing:
        raise ConfigError(f"topics.yaml: no contracts entry for {', '.join(missing)}")
    defaults = declared.get("defaults") or {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in sorted(topics):
        contract = contracts[topic]
        body = topics[topic] or {}
        value = contract.get("value")
        dead_letters = bool(contract.get("dead_letters"))
        if value is not None and value not in codec.schema_names():
            raise ConfigError(f"topics.yaml: {topic} names unknown schema {value!r}")
        message_id = (value or "OperatorLogEntry") + ("DeadLetter" if dead_letters else "")
        if message_id not in messages:
            messages[message_id] = _message(codec, value, dead_letters, message_id)
        channel_id = topic.replace(".", "_")
        config = {**(defaults.get("config") or {}), **(body.get("config") or {})}
        channels[channel_id] = {
            "address": "{prefix}" + topic,
            "description": f"Topic `{topic}` after the deployment's prefix. "
            f"Key: {contract.get('key', 'none')}.",
            "parameters": {"prefix": {"$ref": "#/components/parameters/prefix"}},
            "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
            "bindings": {
                "kafka": {
                    "topic": topic,
                    "partitions": int(body.get("partitions", defaults.get("partitions", 1))),
                    "topicConfiguration": _topic_configuration(config),
                    "bindingVersion": "0.5.0",
                }
            },
        }
        for action, parties in (("send", "publishers"), ("receive", "subscribers")):
            for party in contract.get(parties, []):
                if party not in _PARTIES:
                    raise ConfigError(f"topics.yaml: {topic}: unknown {parties[:-1]} {party!r}")
                operations[f"{party}_{action}s_{channel_id}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{channel_id}"},
                    "summary": f"{_PARTIES[party]} {action.capitalize()}s {topic}.",
                    "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
                }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "streamml topics",
            "version": __version__,
            "description": "Every Kafka topic of streamml: what it carries, its key and "
            "headers, who writes and who reads it. Generated by `streamml asyncapi` from "
            "topics.yaml and schemas/; do not edit. Values are Avro: the single-object "
            "encoding (C3 01 + CRC-64-AVRO fingerprint + body) by default, or the Confluent "
            "schema-registry wire format (00 + 4-byte id + body, subject <topic>-value) when "
            "a registry is configured. Services write in Kafka transactions: read with "
            "isolation.level=read_committed. docs/consumers.md shows consumers.",
        },
        "defaultContentType": "application/octet-stream",
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The local broker (`make kafka-up`).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "parameters": {
                "prefix": {
                    "description": "The deployment's topic prefix "
                    "(STREAMML_KAFKA_TOPIC_PREFIX), e.g. `prod.`; empty by default.",
                    "default": "",
                }
            },
            "messages": dict(sorted(messages.items())),
        },
    }


def _topic_configuration(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "cleanup.policy" in config:
        out["cleanup.policy"] = [str(config["cleanup.policy"])]
    if "retention.ms" in config:
        out["retention.ms"] = int(config["retention.ms"])
    return out


def _message(
    codec: AvroCodec, value: str | None, dead_letters: bool, message_id: str
) -> dict[str, Any]:
    headers = {**_REPLAY_HEADERS, **_REDRIVE_HEADERS}
    if dead_letters:
        headers = {**_DLQ_HEADERS, **headers}
    if value is None:
        return {
            "name": message_id,
            "title": "Operator log entry",
            "summary": "What a replay or redrive already sent (compacted; JSON).",
            "contentType": "application/json",
            "payload": {"type": "object"},
            "bindings": {"kafka": {"key": {"type": "string"}, "bindingVersion": "0.5.0"}},
        }
    summary = str(codec.definition(value).get("doc", value))
    if dead_letters:
        summary = (
            f"A dead letter: the source record's key, value and headers byte for byte "
            f"(a {value}, or the bytes that could not be read as one) plus dlq.* headers."
        )
    return {
        "name": message_id,
        "title": value + (" (dead letter)" if dead_letters else ""),
        "summary": " ".join(summary.split()),
        "contentType": "application/octet-stream",
        "headers": _headers(headers),
        "payload": {"schemaFormat": AVRO_FORMAT, "schema": copy.deepcopy(codec.definition(value))},
        "bindings": {
            "kafka": {"key": {"type": "string"}, "bindingVersion": "0.5.0"},
        },
    }


def render(document: dict[str, Any]) -> str:
    """The document as YAML, as committed in docs/asyncapi.yaml."""
    header = "# GENERATED by `streamml asyncapi` from topics.yaml and schemas/; do not edit.\n"
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
