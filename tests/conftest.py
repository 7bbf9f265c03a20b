"""Test session fixtures: one real Kafka broker per session (or KAFKA_BOOTSTRAP_SERVERS);
on demand, a second broker with a SASL_SSL listener and a real schema registry."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class SecureBroker:
    """A broker with a PLAINTEXT listener (for the test's own reads and writes) and a
    SASL_SSL listener (SCRAM-SHA-512) whose user ``svc`` has ``password``."""

    bootstrap: str
    sasl_ssl_bootstrap: str
    ca_path: Path
    username: str
    password: str

    def client_env(self, **overrides: str) -> dict[str, str]:
        """STREAMML_KAFKA_* settings of a service that connects over SASL_SSL."""
        return {
            "STREAMML_KAFKA_BOOTSTRAP_SERVERS": self.sasl_ssl_bootstrap,
            "STREAMML_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMML_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "STREAMML_KAFKA_SASL_USERNAME": self.username,
            "STREAMML_KAFKA_SASL_PASSWORD": self.password,
            "STREAMML_KAFKA_SSL_CA_LOCATION": str(self.ca_path),
            **overrides,
        }


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A second local broker, started once per session, with a SASL_SSL listener."""
    from streamml.broker import LocalBroker

    password = f"pw-{uuid.uuid4().hex}"
    broker = LocalBroker(
        run_dir=tmp_path_factory.mktemp("kafka-sasl"),
        port=0,
        sasl_ssl_port=0,
        scram_users={"svc": password},
        heap="512m",
    )
    broker.start()
    assert broker.sasl_ssl_bootstrap is not None
    try:
        yield SecureBroker(
            broker.bootstrap, broker.sasl_ssl_bootstrap, broker.ca_path, "svc", password
        )
    finally:
        broker.stop()


@dataclass(frozen=True)
class RegistryEndpoint:
    """A running Confluent-compatible schema registry served over HTTPS."""

    url: str
    ca_path: Path

    def client_env(self) -> dict[str, str]:
        return {
            "STREAMML_KAFKA_SCHEMA_REGISTRY_URL": self.url,
            "STREAMML_KAFKA_SCHEMA_REGISTRY_SSL_CA_LOCATION": str(self.ca_path),
        }


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryEndpoint]:
    """Apicurio Registry (Maven Central), HTTPS with a private CA, started once per session."""
    from streamml.localregistry import LocalRegistry

    run_dir = tmp_path_factory.mktemp("registry")
    registry = LocalRegistry(run_dir=run_dir, port=0, tls_dir=run_dir / "tls")
    registry.start(timeout_s=240)
    assert registry.ca_path is not None
    try:
        yield RegistryEndpoint(registry.url, registry.ca_path)
    finally:
        registry.stop()
