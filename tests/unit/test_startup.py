"""Start-up diagnostics without a broker: retries, port and file checks, librdkafka logs."""

from __future__ import annotations

import io
import json
import logging
import socket
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamml.errors import ConfigError, StreamMLError
from streamml.logs import RepeatFilter, configure_logging, librdkafka_logger
from streamml.settings import HttpSettings, KafkaSettings, load_settings
from streamml.startup import check_files, check_http_port, is_transient, retry_transient


def _kafka_error(code: int, **flags: bool) -> KafkaException:
    return KafkaException(KafkaError(code, "test double of a broker answer", **flags))


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
    ],
)
def test_metadata_errors_of_a_fresh_broker_are_retried_even_when_not_marked_retriable(
    code: int,
) -> None:
    answers: list[object] = [_kafka_error(code), _kafka_error(code), {"offsets": 7}]
    delays: list[float] = []

    def call() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert not _kafka_error(code).args[0].retriable()
    result = retry_transient(call, what="listing offsets", sleep=delays.append)
    assert result == {"offsets": 7}
    assert len(delays) == 2 and all(d > 0 for d in delays)


def test_an_error_that_waiting_cannot_heal_is_raised_at_once() -> None:
    calls = []

    def call() -> None:
        calls.append(1)
        raise _kafka_error(KafkaError.TOPIC_AUTHORIZATION_FAILED)

    with pytest.raises(KafkaException):
        retry_transient(call, what="listing offsets", sleep=lambda _: None)
    assert len(calls) == 1
    assert not is_transient(_kafka_error(KafkaError.NOT_LEADER_FOR_PARTITION, fatal=True))
    assert not is_transient(ValueError("not Kafka"))


def test_retries_stop_at_the_deadline_and_reraise_the_last_error() -> None:
    calls = []

    def call() -> None:
        calls.append(1)
        raise _kafka_error(KafkaError.LEADER_NOT_AVAILABLE)

    with pytest.raises(KafkaException) as info:
        retry_transient(call, what="x", deadline_s=0.0, sleep=lambda _: None)
    assert info.value.args[0].code() == KafkaError.LEADER_NOT_AVAILABLE
    assert len(calls) == 1


def test_a_taken_http_port_is_one_configuration_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"HTTP port {port} on 127.0.0.1 is already in use"):
            check_http_port(HttpSettings(port=port))
    check_http_port(HttpSettings(port=port))  # free again
    check_http_port(HttpSettings(port=0))


def test_a_missing_ca_file_is_named_with_its_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    monkeypatch.setenv("STREAMML_KAFKA_SSL_CA_LOCATION", str(missing))
    with pytest.raises(ConfigError) as info:
        load_settings(KafkaSettings)
    assert "STREAMML_KAFKA_SSL_CA_LOCATION" in str(info.value)
    assert f"no such file {missing}" in str(info.value)
    assert "\n" not in str(info.value)
    # built without validation (as a test or a tool might): the start-up check still finds it
    unchecked = KafkaSettings.model_construct(schema_registry_ssl_key_location=str(missing))
    with pytest.raises(ConfigError, match="STREAMML_KAFKA_SCHEMA_REGISTRY_SSL_KEY_LOCATION"):
        check_files(unchecked)


def test_a_nested_kafka_setting_is_named_with_the_kafka_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.features.settings import FeaturesSettings

    monkeypatch.setenv("STREAMML_KAFKA_BOOTSTRAP_SERVERS", "no-port")
    with pytest.raises(ConfigError) as info:
        load_settings(FeaturesSettings)
    assert str(info.value).startswith("invalid setting STREAMML_KAFKA_BOOTSTRAP_SERVERS:")
    assert isinstance(info.value, StreamMLError)


def test_registry_tls_settings_reach_the_registry_client_config(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "client.pem", "client-key.pem"))
    for path in (ca, cert, key):
        path.write_text("pem")
    kafka = KafkaSettings(
        schema_registry_url="https://127.0.0.1:1",
        schema_registry_basic_auth="u:p",  # type: ignore[arg-type]
        schema_registry_ssl_ca_location=str(ca),
        schema_registry_ssl_certificate_location=str(cert),
        schema_registry_ssl_key_location=str(key),
    )
    assert kafka.registry_client_config() == {
        "basic.auth.user.info": "u:p",
        "ssl.ca.location": str(ca),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
    }


def test_repeated_librdkafka_lines_pass_once_per_interval_with_the_count_held_back() -> None:
    now = [0.0]
    repeat = RepeatFilter(30.0, clock=lambda: now[0])

    def passes(text: str) -> logging.LogRecord | None:
        record = logging.makeLogRecord({"msg": text, "levelno": logging.ERROR})
        return record if repeat.filter(record) else None

    line = "127.0.0.1:{}/bootstrap: Connect failed (after {}ms in state CONNECT)"
    assert passes(line.format(9092, 1)) is not None
    for ms in range(19):  # ~19 lines a second, as librdkafka retries a dead broker
        now[0] += 0.05
        assert passes(line.format(9092, ms)) is None
    assert passes("a different error") is not None
    # librdkafka's own suppression note does not make a new message
    suppressed = "127.0.0.1:9092/bootstrap: Connect failed (after 0ms in state CONNECT, " + (
        "4 identical error(s) suppressed)"
    )
    assert passes(suppressed) is None
    now[0] += 30
    again = passes(line.format(9092, 3))
    assert again is not None and again.repeated == 20


def test_librdkafka_lines_are_structured_json(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO", "json", service="features")
    try:
        logger = librdkafka_logger()
        assert logger is librdkafka_logger()  # one logger, its filters added once
        # what confluent-kafka calls for each librdkafka line
        logger.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "SASL failed")
    finally:
        logging.getLogger().handlers.clear()
    fields = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert fields["msg"] == "SASL failed"
    assert fields["facility"] == "FAIL"
    assert fields["client"] == "rdkafka#producer-1"
    assert fields["service"] == "features"
    # librdkafka's ERR is kept as a field; the line is a warning (the runtime says what is
    # an error), so a broker blip's refused connections page nobody
    assert fields["level"] == "warning" and fields["rdkafka_severity"] == "error"
    assert KafkaSettings().client_config()["logger"] is logger
