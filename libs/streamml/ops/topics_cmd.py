"""``topics create`` / ``topics describe``: provision and inspect the declared topics.

The declaration is libs/streamml/topics.yaml (logical names; the prefix goes before each).
Creation is idempotent: existing topics are left as they are and reported, with a note
when they differ from the declaration (partitions are never changed here, because adding
partitions moves keys between partitions and breaks per-key order and state).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from streamml.errors import BrokerError, ConfigError
from streamml.ops.common import ADMIN_TIMEOUT_S, UsageError, admin_client
from streamml.settings import KafkaSettings
from streamml.topics import TopicSpec, load_topic_specs, provision

REPLICATION_ENV = "STREAMML_TOPICS_REPLICATION_FACTOR"
SHOWN_CONFIGS = ("cleanup.policy", "retention.ms", "min.insync.replicas")


def replication_factor() -> int:
    """Replication factor for new topics (env STREAMML_TOPICS_REPLICATION_FACTOR, default 1)."""
    raw = os.environ.get(REPLICATION_ENV, "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{REPLICATION_ENV}: must be a whole number >= 1 (got {raw!r})")
    return int(raw)


def declared(kafka: KafkaSettings, names: Sequence[str] = ()) -> list[TopicSpec]:
    """The declared topics with the prefix applied: all, or the named ones (logical names)."""
    specs = load_topic_specs(kafka.topic_prefix, replication_factor=replication_factor())
    if not names:
        return specs
    known = {s.name: s for s in specs}
    chosen = []
    for name in names:
        spec = known.get(kafka.topic(name))
        if spec is None:
            raise UsageError(f"topic {name!r} is not declared in topics.yaml")
        chosen.append(spec)
    return chosen


@dataclass(frozen=True, slots=True)
class TopicStatus:
    """What ``topics create`` did, or what ``topics describe`` found, for one topic."""

    name: str
    status: str
    partitions: int | None = None
    replicas: int | None = None
    config: dict[str, str] = field(default_factory=dict)
    note: str = ""


def _existing(admin: AdminClient) -> dict[str, Any]:
    try:
        return dict(admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics)
    except KafkaException as exc:
        raise BrokerError(f"cannot list topics: {exc}") from exc


def create(
    kafka: KafkaSettings, specs: Sequence[TopicSpec], *, dry_run: bool = False
) -> list[TopicStatus]:
    """Create the declared topics that are missing (``streamml.topics.provision``)."""
    existing = _existing(admin_client(kafka))
    statuses = []
    if dry_run:
        outcome = {s.name: "exists" if s.name in existing else "would create" for s in specs}
    else:
        outcome = provision(kafka.client_config(), specs, timeout_s=ADMIN_TIMEOUT_S)
    for spec in specs:
        status = outcome.get(spec.name, "exists")
        found = existing.get(spec.name)
        count = len(found.partitions) if found is not None else spec.partitions
        note = ""
        if found is not None and count != spec.partitions:
            note = f"declared {spec.partitions} partitions (not changed)"
        statuses.append(
            TopicStatus(spec.name, status, count, spec.replication_factor, dict(spec.config), note)
        )
    return statuses


def describe(kafka: KafkaSettings, specs: Sequence[TopicSpec]) -> list[TopicStatus]:
    """Partitions, replicas and key configs of the declared topics as they are on the broker."""
    admin = admin_client(kafka)
    existing = _existing(admin)
    present = [s.name for s in specs if s.name in existing]
    configs: dict[str, dict[str, str]] = {}
    if present:
        resources_ = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in present]
        try:
            for resource, future in admin.describe_configs(
                resources_, request_timeout=ADMIN_TIMEOUT_S
            ).items():
                entries = future.result()
                configs[resource.name] = {
                    key: str(entries[key].value) for key in SHOWN_CONFIGS if key in entries
                }
        except KafkaException as exc:
            raise BrokerError(f"cannot describe topic configs: {exc}") from exc
    statuses = []
    for spec in specs:
        physical = spec.name
        found = existing.get(physical)
        if found is None:
            statuses.append(TopicStatus(physical, "missing", note="run `streamml topics create`"))
            continue
        partitions = len(found.partitions)
        replicas = min((len(p.replicas) for p in found.partitions.values()), default=0)
        notes = []
        if partitions != spec.partitions:
            notes.append(f"declared {spec.partitions} partitions")
        actual = configs.get(physical, {})
        for key, value in spec.config.items():
            if key in actual and actual[key] != value:
                notes.append(f"{key}={actual[key]} (declared {value})")
        statuses.append(
            TopicStatus(physical, "ok", partitions, replicas, actual, note="; ".join(notes))
        )
    return statuses
