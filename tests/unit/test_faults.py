"""The fault taxonomy, the dead-letter circuit's batch counting, and the default instance id."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streamml.circuit import CircuitState, FailStopCircuit
from streamml.codec.registry import _registry_fault
from streamml.errors import (
    AuthenticationError,
    BrokerUnavailableError,
    DecodeError,
    EncodeError,
    FencedError,
    RegistryRefusedError,
    RegistryUnavailableError,
    StateStoreError,
    ValidationError,
)
from streamml.faults import FaultKind, classify, is_record_fault, kafka_error
from streamml.settings import RuntimeSettings


@pytest.mark.parametrize(
    "exc",
    [DecodeError("x"), ValidationError("x"), EncodeError("x"), KeyError("x"), ZeroDivisionError()],
)
def test_the_records_own_faults_are_record_faults(exc: Exception) -> None:
    assert is_record_fault(exc)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (RegistryUnavailableError("down"), FaultKind.TRANSIENT),
        (BrokerUnavailableError("down"), FaultKind.TRANSIENT),
        (StateStoreError("x"), FaultKind.TRANSIENT),
        (RegistryRefusedError("409"), FaultKind.UNRECOVERABLE),
        (AuthenticationError("no"), FaultKind.UNRECOVERABLE),
        (FencedError("x"), FaultKind.FENCED),
        (KafkaException(KafkaError(KafkaError._TRANSPORT)), FaultKind.TRANSIENT),
        (
            KafkaException(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED)),
            FaultKind.UNRECOVERABLE,
        ),
        (KafkaException(KafkaError(KafkaError._FENCED, fatal=True)), FaultKind.FENCED),
    ],
)
def test_infrastructure_faults_are_never_record_faults(exc: Exception, kind: FaultKind) -> None:
    assert classify(exc).kind is kind
    assert not is_record_fault(exc)


def test_kafka_errors_become_typed_errors() -> None:
    transport = KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down"))
    assert isinstance(kafka_error(transport, "commit"), BrokerUnavailableError)
    auth = KafkaException(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED, "bad password"))
    error = kafka_error(auth, "commit")
    assert isinstance(error, AuthenticationError) and "SASL_PASSWORD" in (error.setting or "")
    with pytest.raises(FencedError):
        kafka_error(KafkaException(KafkaError(KafkaError.PRODUCER_FENCED, fatal=True)), "x")


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, RegistryUnavailableError), (503, RegistryUnavailableError),
     (429, RegistryUnavailableError), (408, RegistryUnavailableError),
     (409, RegistryRefusedError), (401, RegistryRefusedError), (422, RegistryRefusedError)],
)  # fmt: skip
def test_registry_answers_are_unavailable_or_refused(status: int, kind: type) -> None:
    error = _registry_fault(SchemaRegistryError(status, status * 100, "nope"), "registering X")
    assert type(error) is kind
    assert str(status) in str(error)


def test_a_registry_that_cannot_be_reached_is_unavailable() -> None:
    assert isinstance(_registry_fault(ConnectionError("refused"), "x"), RegistryUnavailableError)


def test_refused_credentials_name_the_setting() -> None:
    error = _registry_fault(SchemaRegistryError(401, 40101, "unauthorized"), "registering X")
    assert isinstance(error, RegistryRefusedError)
    assert classify(error).one_line().endswith("(check STREAMML_KAFKA_SCHEMA_REGISTRY_BASIC_AUTH)")


def runtime_circuit() -> FailStopCircuit:
    s = RuntimeSettings(instance_id="t")
    return FailStopCircuit(
        window=s.dead_letter_window,
        threshold=s.dead_letter_threshold,
        min_records=s.dead_letter_min_records,
        label="dead-letter",
    )


def test_default_circuit_never_trips_on_the_demos_malformed_share() -> None:
    circuit = runtime_circuit()
    # 0.2 % malformed, in batches of 500 with the bad ones bunched in one batch (worst case).
    for batch in range(200):
        bad = 10 if batch % 10 == 0 else 0
        assert circuit.record_batch(500 - bad, ["decode"] * bad) is None
    assert circuit.state is CircuitState.CLOSED


def test_default_circuit_trips_when_every_record_fails_and_names_the_classes() -> None:
    circuit = runtime_circuit()
    reason = circuit.record_batch(0, ["RuntimeError"] * 120 + ["decode"] * 3)
    assert reason is not None and "dead-letter share 1.00" in reason
    assert circuit.state is CircuitState.OPEN
    assert circuit.top_reasons(2) == [("RuntimeError", 120), ("decode", 3)]
    circuit.resume(probe=False)
    assert circuit.state is CircuitState.CLOSED and circuit.invalid_share == 0.0


def test_batch_counting_slides_the_window_like_record_by_record() -> None:
    by_batch = FailStopCircuit(window=50, threshold=0.9, min_records=10)
    by_record = FailStopCircuit(window=50, threshold=0.9, min_records=10)
    for valid, bad in [(30, 5), (10, 20), (40, 0), (3, 7)]:
        by_batch.record_batch(valid, ["x"] * bad)
        for _ in range(valid):
            by_record.record(invalid=False)
        for _ in range(bad):
            by_record.record(invalid=True, reason="x")
        assert by_batch.invalid_share == pytest.approx(by_record.invalid_share)


def test_the_default_instance_id_differs_per_process_and_comes_back_after_a_restart(
    tmp_path: Path,
) -> None:
    code = (
        "import sys, time; from streamml.instance import default_instance_id as d; "
        "print(d(), flush=True); time.sleep(float(sys.argv[1]))"
    )
    env = {"STREAMML_SLOT_DIR": str(tmp_path), "HOSTNAME": "host", "PATH": "/usr/bin:/bin"}

    def start(hold: float) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(hold)], env=env, stdout=subprocess.PIPE, text=True
        )

    first, second = start(60), start(60)
    try:
        assert first.stdout is not None and second.stdout is not None
        first_id, second_id = first.stdout.readline().strip(), second.stdout.readline().strip()
        assert {first_id, second_id} == {"host-0", "host-1"}
        first.kill()  # SIGKILL: the kernel releases its lock
        first.wait()
        out, _ = start(0).communicate(timeout=30)
        assert out.strip() == first_id  # the same transactional id: it fences the zombie
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_the_origin_of_a_dead_letter_is_its_replay_source_else_its_position() -> None:
    from streamml.deadletter import dead_letter_headers, dead_letter_origin, replay_origin

    first = dead_letter_headers(
        [("trace", b"x")], error_class="decode", message="m", service="s", stage="decode",
        topic="p.events", partition=1, offset=100, source_timestamp_ms=0, now_ms=0,
    )  # fmt: skip
    replayed_copy = [("trace", b"x"), ("replay.id", b"r1"), ("replay.source", b"p.events/1/100")]
    second = dead_letter_headers(
        replayed_copy, error_class="decode", message="m", service="s", stage="decode",
        topic="p.events", partition=1, offset=900, source_timestamp_ms=0, now_ms=0,
    )  # fmt: skip
    assert dead_letter_origin(first) == dead_letter_origin(second) == ("p.events", 1, 100)
    # A copy of a copy still points at the first origin.
    again = [*replayed_copy, ("replay.id", b"r2"), ("replay.source", b"p.events/1/900")]
    assert replay_origin(again) == ("p.events", 1, 100)
    # A redriven record failing again is the next attempt, not a replay.
    assert replay_origin([*replayed_copy, ("redrive.id", b"d1")]) is None
    assert replay_origin([("trace", b"x")]) is None


def test_a_circuit_needing_more_records_than_its_window_is_a_one_line_setting_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.features.settings import FeaturesSettings
    from streamml.errors import ConfigError
    from streamml.settings import load_settings

    monkeypatch.setenv("STREAMML_FEATURES_RUNTIME__DEAD_LETTER_MIN_RECORDS", "5000")
    with pytest.raises(ConfigError, match="must not exceed dead_letter_window") as info:
        load_settings(FeaturesSettings)
    assert "\n" not in str(info.value)
