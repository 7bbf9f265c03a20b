"""Which declared topics `topics create/describe` work on (no broker needed)."""

from __future__ import annotations

import pytest

from streamml.errors import ConfigError
from streamml.ops.common import UsageError, kafka_settings
from streamml.ops.topics_cmd import declared


def test_all_declared_topics_get_the_prefix() -> None:
    specs = declared(kafka_settings("127.0.0.1:1", "prod."))
    names = {s.name for s in specs}
    assert {"prod.events", "prod.events.dlq", "prod.events.dlq.parked"} <= names
    assert "prod.operator.redrive.log" in names
    log = next(s for s in specs if s.name == "prod.operator.redrive.log")
    assert log.config["cleanup.policy"] == "compact"


def test_named_topics_and_unknown_names() -> None:
    kafka = kafka_settings("127.0.0.1:1", "p.")
    assert [s.name for s in declared(kafka, ["features", "events"])] == ["p.features", "p.events"]
    with pytest.raises(UsageError, match="not declared"):
        declared(kafka, ["p.events"])  # logical names only: the prefix is added


def test_replication_factor_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMML_TOPICS_REPLICATION_FACTOR", "3")
    assert {s.replication_factor for s in declared(kafka_settings("127.0.0.1:1", ""))} == {3}
    monkeypatch.setenv("STREAMML_TOPICS_REPLICATION_FACTOR", "zero")
    with pytest.raises(ConfigError, match="STREAMML_TOPICS_REPLICATION_FACTOR"):
        declared(kafka_settings("127.0.0.1:1", ""))
