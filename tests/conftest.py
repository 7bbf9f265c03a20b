"""Test session fixtures: one real Kafka broker per session (or KAFKA_BOOTSTRAP_SERVERS);
on demand, a second broker with a SASL_SSL listener and a real schema registry.

Under pytest-xdist (`make test`: two workers) each worker is a session of its own, so each
starts its own broker; the hooks below keep the tests that share an expensive fixture on one
worker, and split the run into `make test`'s phases (see docs/decisions/parallel-tests.md).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Session servers started once per worker that uses them (a minute each under load): their
# tests are kept on one worker, so each starts once per run.
SHARED_SERVERS = ("schema_registry", "secure_broker")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--phase",
        choices=("parallel", "serial"),
        default=None,
        help="`make test`'s phases: 'parallel' leaves out the tests marked serial (they run "
        "alone afterwards), 'serial' runs only them; default: every test.",
    )


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks it is given here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    phase = config.getoption("phase")
    if phase is not None:
        serial = phase == "serial"
        chosen: dict[bool, list[pytest.Item]] = {True: [], False: []}
        for item in items:
            chosen[(item.get_closest_marker("serial") is not None) == serial].append(item)
        if chosen[False]:
            config.hook.pytest_deselected(items=chosen[False])
            items[:] = chosen[True]
    # pytest-xdist's --dist loadgroup (its workers see it as the loadgroup flag)
    if config.getoption("dist", default="no") == "loadgroup" or getattr(
        config.option, "loadgroup", False
    ):
        for item, group in _worker_groups(items).items():
            item.add_marker(pytest.mark.xdist_group(group))
            # xdist's scheduler learns the group from an "@group" suffix it writes into
            # item._nodeid, which pytest 9.2 no longer reads (its ids are NodeId objects:
            # pytest-xdist#1386, grouping is silently off); the suffix goes where it reads.
            node_id = getattr(item, "_id", None)
            if node_id is not None and hasattr(node_id, "parse"):
                item._id = node_id.parse(f"{node_id}@{group}")


def _worker_groups(items: list[pytest.Item]) -> dict[pytest.Item, str]:
    """The tests that must share a worker, by group name: a module's tests when it has a
    module-scoped fixture (built once per worker that runs any of them: a demo run, a
    trained model), and every test of a session server in SHARED_SERVERS (a module
    with both goes to the server's group). The other tests go wherever a worker is free."""
    bound: set[str] = set()  # modules with a module-scoped fixture
    servers: dict[str, str] = {}  # module -> a shared server one of its tests uses
    for item in items:
        module = _module(item)
        if _module_scoped(item, module):
            bound.add(module)
        if (server := _server(item)) is not None:
            servers.setdefault(module, server)
    groups: dict[pytest.Item, str] = {}
    for item in items:
        module = _module(item)
        group = (servers.get(module, module) if module in bound else None) or _server(item)
        if group is not None:
            groups[item] = group
    return groups


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _server(item: pytest.Item) -> str | None:
    names = set(getattr(item, "fixturenames", ()))
    return next((name for name in SHARED_SERVERS if name in names), None)


def _module_scoped(item: pytest.Item, module: str) -> bool:
    """The test uses a module-scoped fixture of its own module (not a plugin's)."""
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is None:  # not a test function (a doctest)
        return False
    return any(
        definitions[-1].scope == "module" and definitions[-1].baseid == module
        for definitions in fixture_info.name2fixturedefs.values()
    )


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
