"""Services over SASL_SSL (SCRAM-SHA-512) on the real broker, and the start-up faults that
are configuration faults: each one line naming the cause, exit code 2, no dead letters."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from streamml.tls import LocalCA
from tests.conftest import SecureBroker
from tests.integration.runtime_support import encoded, make_events
from tests.integration.test_features_service import features_process
from tests.integration.test_scorer import _scorer, trained
from tests.kafkatest import ROOT, ServiceProcess, consume_all, create_topics, produce

pytestmark = [pytest.mark.integration, pytest.mark.security]

__all__ = ["trained"]  # the scorer's signed models, a fixture of this module too


def _body(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:  # 503 bodies count too
        return str(exc.read().decode())


def test_features_and_scorer_over_sasl_ssl_never_show_the_password(
    secure_broker: SecureBroker,
    topic_prefix: str,
    logs_dir: Path,
    trained: tuple[Path, Path, Path],
) -> None:
    broker = secure_broker
    create_topics(broker.bootstrap, topic_prefix, partitions=2)
    events = make_events(300, seed=13)
    produce(broker.bootstrap, f"{topic_prefix}events", encoded(events))
    env = broker.client_env(STREAMML_KAFKA_TOPIC_PREFIX=topic_prefix)
    features = features_process(
        broker.sasl_ssl_bootstrap,
        topic_prefix,
        logs_dir,
        env={**env, "STREAMML_FEATURES_LOG_LEVEL": "DEBUG", "STREAMML_FEATURES_LOG_FORMAT": "json"},
    ).start()
    scorer = _scorer(
        broker.sasl_ssl_bootstrap,
        topic_prefix,
        logs_dir,
        trained,
        extra={**env, "STREAMML_SCORER_LOG_LEVEL": "DEBUG"},
    ).start()
    try:
        predictions = consume_all(
            broker.bootstrap, f"{topic_prefix}predictions", expect=len(events), timeout_s=180
        )
        assert len(predictions) == len(events)
        features.wait_ready(60)
        scorer.wait_ready(60)
        bodies = [
            _body(service.http_port, path)
            for service in (features, scorer)
            if service.http_port is not None
            for path in ("/metrics", "/healthz", "/readyz")
        ]
        assert all(bodies) and "streamml" in bodies[0]
        cli = subprocess.run(
            [sys.executable, "-m", "streamml.cli", "topics", "describe"],
            env={**os.environ, **env, "STREAMML_LOG_LEVEL": "DEBUG"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        assert f"{topic_prefix}predictions" in cli.stdout
    finally:
        assert features.terminate() == 0
        assert scorer.terminate() == 0
        features.stop()
        scorer.stop()
    logs = [(logs_dir / name).read_text() for name in ("features.log", "scorer.log")]
    assert '"level": "debug"' in logs[0]  # the most talkative level was on
    for text in [*logs, *bodies, cli.stdout, cli.stderr]:
        assert broker.password not in text


def _held_port() -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


@pytest.mark.parametrize("case", ["http-port-taken", "ca-missing", "wrong-password", "wrong-ca"])
def test_a_configuration_fault_at_start_up_is_one_line_and_exit_code_2(
    case: str,
    secure_broker: SecureBroker,
    topic_prefix: str,
    logs_dir: Path,
    tmp_path: Path,
) -> None:
    broker = secure_broker
    create_topics(broker.bootstrap, topic_prefix, partitions=1)
    produce(broker.bootstrap, f"{topic_prefix}events", encoded(make_events(50, seed=2)))
    env = broker.client_env(STREAMML_KAFKA_TOPIC_PREFIX=topic_prefix)
    holder = _held_port()
    port = holder.getsockname()[1]
    other_ca = LocalCA.create(tmp_path / "other-ca").cert_path
    missing = tmp_path / "no-such-dir" / "ca.pem"
    overrides, expected = {
        "http-port-taken": (
            {"STREAMML_FEATURES_HTTP__PORT": str(port)},
            f"HTTP port {port} on 127.0.0.1 is already in use",
        ),
        "ca-missing": (
            {"STREAMML_KAFKA_SSL_CA_LOCATION": str(missing)},
            f"STREAMML_KAFKA_SSL_CA_LOCATION: Value error, no such file {missing}",
        ),
        "wrong-password": (
            {"STREAMML_KAFKA_SASL_PASSWORD": "not-the-password"},
            "authentication failed for user 'svc' (SCRAM-SHA-512)",
        ),
        "wrong-ca": (
            {"STREAMML_KAFKA_SSL_CA_LOCATION": str(other_ca)},
            f"TLS: certificate verify failed against CA {other_ca}",
        ),
    }[case]
    service: ServiceProcess = features_process(
        broker.sasl_ssl_bootstrap, topic_prefix, logs_dir, env={**env, **overrides}
    ).start()
    try:
        code = service.wait(120)
    finally:
        service.stop()
        holder.close()
    output = (logs_dir / "features.log").read_text()
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if expected in line]
    assert len(lines) == 1, output
    assert "level=error" in lines[0] or lines[0].startswith(("error:", "features:"))
    # Nothing was consumed: no dead letters, no output.
    for topic in ("events.dlq", "features"):
        assert consume_all(broker.bootstrap, f"{topic_prefix}{topic}", idle_s=1.5) == []


def test_an_operator_command_with_a_wrong_password_is_one_line_and_exit_code_2(
    secure_broker: SecureBroker,
) -> None:
    env = secure_broker.client_env(STREAMML_KAFKA_SASL_PASSWORD="not-the-password")
    cli = subprocess.run(
        [sys.executable, "-m", "streamml.cli", "topics", "describe"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 2, cli.stderr
    assert cli.stderr.strip().splitlines() == [
        f"error: authentication failed for user 'svc' (SCRAM-SHA-512) at "
        f"{secure_broker.sasl_ssl_bootstrap}; check STREAMML_KAFKA_SASL_USERNAME, "
        "STREAMML_KAFKA_SASL_PASSWORD and STREAMML_KAFKA_SASL_MECHANISM"
    ]
    assert "not-the-password" not in cli.stdout + cli.stderr
