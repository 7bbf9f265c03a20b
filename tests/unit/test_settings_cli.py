"""Settings, topic config and CLI errors: one line, the right exit code, nothing changed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streamml.broker import LocalBroker, require_tool
from streamml.errors import BrokerError, ConfigError
from streamml.settings import KafkaSettings, load_settings
from streamml.topics import load_topic_specs


def test_bad_bootstrap_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMML_KAFKA_BOOTSTRAP_SERVERS", "localhost")
    with pytest.raises(ConfigError) as info:
        load_settings(KafkaSettings)
    message = str(info.value)
    assert "\n" not in message
    assert "STREAMML_KAFKA_BOOTSTRAP_SERVERS" in message and "host:port" in message


def test_secrets_are_not_shown_but_reach_the_client_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMML_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMML_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAMML_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMML_KAFKA_SASL_PASSWORD", "hunter2")
    settings = load_settings(KafkaSettings)
    assert "hunter2" not in repr(settings)
    config = settings.client_config()
    assert config["sasl.password"] == "hunter2"
    assert config["security.protocol"] == "SASL_SSL"


def test_topic_prefix_applies_to_every_declared_topic() -> None:
    specs = load_topic_specs("prod.")
    names = {s.name for s in specs}
    assert {"prod.events", "prod.features", "prod.predictions", "prod.labels"} <= names
    assert all(name.startswith("prod.") for name in names)
    control = next(s for s in specs if s.name == "prod.model.control")
    assert control.config["cleanup.policy"] == "compact"


def test_malformed_topic_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="malformed"):
        load_topic_specs(text="topics: [1, 2")


def test_missing_tool_says_how_to_install_it() -> None:
    with pytest.raises(BrokerError, match="apt-get install nothing-here"):
        require_tool("surely-not-a-real-tool-xyz", "apt-get install nothing-here")


def test_broker_refuses_a_taken_port(tmp_path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        broker = LocalBroker(run_dir=tmp_path, port=port)
        with pytest.raises(BrokerError, match="taken"):
            broker.start(timeout_s=5)


@pytest.mark.parametrize(
    "args",
    [
        ["kafka", "up", "--port", "not-a-number"],
        ["run", "no-such-service"],
        ["no-such-command"],
    ],
)
def test_cli_bad_arguments_give_one_line_and_exit_2(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamml.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def test_the_consumer_gets_the_fetch_queue_backoff_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # librdkafka's default (1,000 ms) idles a service for a second each time 64 MB of
    # large records are prefetched; the runtime passes its own setting.
    from services.features.settings import FeaturesSettings
    from streamml import runtime as runtime_module
    from streamml.processor import Processor, Result
    from streamml.runtime import clients as clients_module
    from streamml.settings import HttpSettings, RuntimeSettings

    class Nothing(Processor):
        def process(self, records, state):  # type: ignore[no-untyped-def]
            return Result()

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(clients_module, "Consumer", seen.append)
    for settings, expected in (
        (RuntimeSettings(), 20),
        (RuntimeSettings(fetch_queue_backoff_ms=5), 5),
    ):
        rt = runtime_module.StreamRuntime(
            service="t", processor=Nothing(), inputs={"t.in": "Event"},
            kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"), settings=settings,
            http=HttpSettings(),
        )  # fmt: skip
        rt._make_consumer()
        assert seen[-1]["fetch.queue.backoff.ms"] == expected
    monkeypatch.setenv("STREAMML_FEATURES_RUNTIME__FETCH_QUEUE_BACKOFF_MS", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings(FeaturesSettings)
    assert "\n" not in str(info.value) and "FETCH_QUEUE_BACKOFF_MS" in str(info.value)
