"""Topic provisioning from the one declarative config, ``topics.yaml``.

>>> specs = load_topic_specs(prefix="prod.")
>>> next(s for s in specs if s.name == "prod.model.control").config["cleanup.policy"]
'compact'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from streamml.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """One topic: physical name, partitions, replication and topic-level config."""

    name: str
    partitions: int
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


def load_topic_specs(
    prefix: str = "",
    *,
    partitions: int | None = None,
    replication_factor: int = 1,
    text: str | None = None,
) -> list[TopicSpec]:
    """Read topics.yaml (or ``text``); ``partitions`` overrides the default count."""
    if text is None:
        text = (resources.files("streamml") / "topics.yaml").read_text()
    try:
        doc = yaml.safe_load(text)
        defaults = doc.get("defaults", {})
        default_partitions = int(partitions or defaults.get("partitions", 1))
        default_config = {k: str(v) for k, v in (defaults.get("config") or {}).items()}
        specs = []
        for name, declared in (doc.get("topics") or {}).items():
            body = declared or {}
            config = dict(default_config)
            config.update({k: str(v) for k, v in (body.get("config") or {}).items()})
            count = int(body.get("partitions", default_partitions))
            specs.append(TopicSpec(prefix + name, count, replication_factor, config))
    except (yaml.YAMLError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"topics config is malformed: {exc}") from exc
    return specs


def provision(
    admin_config: Mapping[str, Any], specs: Iterable[TopicSpec], *, timeout_s: float = 30.0
) -> dict[str, str]:
    """Create the topics that don't exist; return ``{name: "created" | "exists"}``.

    Idempotent: an existing topic is left as it is (its partition count is reported by
    ``describe`` if it differs from the spec).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(dict(admin_config))
    specs = list(specs)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka to create topics: {exc}") from exc
    outcome = {spec.name: "exists" for spec in specs if spec.name in existing}
    new = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config=dict(spec.config),
        )
        for spec in specs
        if spec.name not in existing
    ]
    if not new:
        return outcome
    for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result()
            outcome[name] = "created"
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                outcome[name] = "exists"
            else:
                raise BrokerError(f"creating topic {name}: {exc.args[0].str()}") from exc
    _wait_for_metadata(admin, [t.topic for t in new], timeout_s)
    return outcome


def _wait_for_metadata(admin: Any, names: list[str], timeout_s: float) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(
            name in topics
            and topics[name].error is None
            and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name in names
        ):
            return
        time.sleep(0.1)
    raise BrokerError(f"topics not ready after {timeout_s:.0f}s: {', '.join(names)}")
