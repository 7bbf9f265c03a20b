"""Test session fixtures: one real Kafka broker per session (or KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """bootstrap.servers of the session's broker.

    Uses KAFKA_BOOTSTRAP_SERVERS when set (e.g. `make test` starts one), otherwise starts a
    local broker on a free port for this session and stops it at the end.
    """
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    from streamml.broker import LocalBroker

    broker = LocalBroker(run_dir=tmp_path_factory.mktemp("kafka"), port=0)
    broker.start()
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix unique to this test, so tests never share topics."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    """Where child processes of a test write their logs."""
    path = tmp_path / "logs"
    path.mkdir()
    return path
