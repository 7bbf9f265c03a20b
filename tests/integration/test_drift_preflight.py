"""The drift service checks its configuration (files, port, credentials) before it reads
topic metadata: a wrong SASL password or a missing CA file is one line naming the cause and
exit code 2, as for the other services (streamml.startup.preflight)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SecureBroker
from tests.integration.test_drift import _reference, _service
from tests.kafkatest import consume_all, create_topics

pytestmark = [pytest.mark.integration, pytest.mark.security]


@pytest.mark.parametrize("case", ["wrong-password", "ca-missing"])
def test_drift_with_a_configuration_fault_says_one_line_and_exits_2(
    case: str, secure_broker: SecureBroker, topic_prefix: str, logs_dir: Path, tmp_path: Path
) -> None:
    broker = secure_broker
    create_topics(broker.bootstrap, topic_prefix, partitions=2)
    missing = tmp_path / "no-such-dir" / "ca.pem"
    overrides, expected = {
        "wrong-password": (
            {"STREAMML_KAFKA_SASL_PASSWORD": "not-the-password"},
            "authentication failed for user 'svc' (SCRAM-SHA-512)",
        ),
        "ca-missing": (
            {"STREAMML_KAFKA_SSL_CA_LOCATION": str(missing)},
            f"STREAMML_KAFKA_SSL_CA_LOCATION: Value error, no such file {missing}",
        ),
    }[case]
    env = broker.client_env(STREAMML_KAFKA_TOPIC_PREFIX=topic_prefix, **overrides)
    service = _service(
        broker.sasl_ssl_bootstrap, topic_prefix, _reference(tmp_path / "reference.json"),
        logs_dir, **env,
    )  # fmt: skip
    service.start()
    try:
        code = service.wait(120)
    finally:
        service.stop()
    output = (logs_dir / f"drift-{topic_prefix.strip('.')}.log").read_text()
    assert code == 2, output
    assert "Traceback" not in output
    assert "cannot read metadata" not in output  # the vague error of before
    lines = [line for line in output.splitlines() if expected in line]
    assert len(lines) == 1, output
    assert "not-the-password" not in output
    assert consume_all(broker.bootstrap, f"{topic_prefix}drift.alerts", idle_s=1.5) == []
