"""Start-up checks that turn configuration faults into one line, and start-up retries.

:func:`preflight` runs before a service builds its clients:

- a file named by a setting (CA, client certificate, key) that is missing;
- the HTTP port of ``/metrics``, ``/healthz``, ``/readyz`` taken by another process;
- with TLS or SASL, a probe of the brokers that tells a wrong password or an untrusted
  certificate from a broker that is merely down. librdkafka reports both of the former
  only as "Broker transport failure" to the caller and keeps retrying; the probe reads
  the cause from its error callback (``_AUTHENTICATION``, ``_SSL``).

Each raises :class:`~streamml.errors.ConfigError` with one line that names the cause and
the setting to fix; the service exits 2. A broker that does not answer is not a
configuration fault and is left to the runtime's retries.

:func:`retry_transient` retries the metadata errors a fresh broker or a just-created
topic answers with for a few seconds (``NOT_LEADER_FOR_PARTITION``,
``LEADER_NOT_AVAILABLE``, ``NOT_COORDINATOR``, ``UNKNOWN_TOPIC_OR_PART``...), which
librdkafka does not always mark ``retriable()``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from streamml.errors import ConfigError
from streamml.logs import fields
from streamml.settings import HttpSettings, KafkaSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Broker answers that mean "not settled yet", not "wrong": leadership or coordinators of
#: a fresh broker or topic are still being elected, or the topic is not in the metadata
#: cache of every listener yet.
TRANSIENT_METADATA_ERRORS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        # Leader epochs out of step while a fresh topic's leadership settles: a
        # silent-failures run lost a service at start-up to UNKNOWN_LEADER_EPOCH from
        # list_offsets on changelogs created moments before.
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
        KafkaError._WAIT_COORD,
        # librdkafka's local codes for a topic its metadata cache does not hold yet: what
        # list_offsets answers (_NOENT) for a topic created moments ago.
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._NOENT,
    }
)


def is_transient(exc: BaseException) -> bool:
    """True for a KafkaException that waiting can heal (see TRANSIENT_METADATA_ERRORS)."""
    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    error = exc.args[0]
    if not isinstance(error, KafkaError) or error.fatal():
        return False
    return bool(error.retriable()) or error.code() in TRANSIENT_METADATA_ERRORS


def retry_transient(
    call: Callable[[], T],
    *,
    what: str,
    deadline_s: float = 60.0,
    initial_s: float = 0.1,
    max_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, again with exponential backoff (full jitter) while it raises a transient
    metadata error, for at most ``deadline_s``; the last error is re-raised after that."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_delay(deadline_s),
        wait=tenacity.wait_random_exponential(multiplier=initial_s, max=max_s),
        sleep=sleep,
        reraise=True,
        before_sleep=lambda state: log.warning(
            "transient failure; retrying",
            extra=fields(
                what=what,
                error=state.outcome.exception() if state.outcome else "?",
                attempt=state.attempt_number,
            ),
        ),
    )
    return retrying(call)


def preflight(kafka: KafkaSettings, http: HttpSettings, *, probe_timeout_s: float = 20.0) -> None:
    """Raise ConfigError naming the first configuration fault found; return when none."""
    check_files(kafka)
    check_http_port(http)
    if kafka.security_protocol != "PLAINTEXT":
        probe_credentials(kafka, timeout_s=probe_timeout_s)


def check_files(kafka: KafkaSettings) -> None:
    """Every file a setting names exists (settings check this too; a caller may build
    KafkaSettings with model_construct, or the file may vanish before start)."""
    for field in (
        "ssl_ca_location",
        "ssl_certificate_location",
        "ssl_key_location",
        "schema_registry_ssl_ca_location",
        "schema_registry_ssl_certificate_location",
        "schema_registry_ssl_key_location",
    ):
        path = getattr(kafka, field)
        if path and not os.path.isfile(path):
            raise ConfigError(
                f"STREAMML_KAFKA_{field.upper()}: no such file {path}; give the path of a PEM file"
            )


def check_http_port(http: HttpSettings) -> None:
    """The metrics/health port can be bound (0 picks a free one and always can)."""
    if http.port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The same option as the HTTP server itself (a port in TIME_WAIT is not "taken").
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((http.host, http.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"HTTP port {http.port} on {http.host} is already in use by another "
                    "process; set the service's HTTP__PORT to a free port (0 = any)"
                ) from exc
            raise ConfigError(
                f"cannot listen on {http.host}:{http.port} ({exc.strerror}); "
                "check the service's HTTP__HOST and HTTP__PORT"
            ) from exc


def probe_credentials(kafka: KafkaSettings, *, timeout_s: float) -> None:
    """Ask the brokers for metadata; an authentication or TLS failure is a ConfigError."""
    faults: list[KafkaError] = []
    config = {
        **kafka.client_config(),
        "client.id": "streamml-preflight",
        "error_cb": faults.append,
        # The probe says what is wrong in one line; librdkafka's own lines would repeat it.
        "log_level": 0,
    }
    try:
        admin = AdminClient(config)
    except KafkaException as exc:  # a setting librdkafka rejects (e.g. an unreadable key)
        raise ConfigError(f"Kafka client settings: {exc.args[0].str()}") from exc
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException:
            admin.poll(0)  # serves error_cb
        fault = _configuration_fault(kafka, faults)
        if fault is not None:
            raise ConfigError(fault)
    # Not answering is an infrastructure fault: the runtime's own retries deal with it.
    log.warning("preflight: no answer from Kafka",
                extra=fields(bootstrap=kafka.bootstrap_servers, timeout_s=timeout_s))  # fmt: skip


def _configuration_fault(kafka: KafkaSettings, faults: list[KafkaError]) -> str | None:
    for error in faults:
        code, text = error.code(), error.str()
        if code == KafkaError._AUTHENTICATION:
            return (
                f"authentication failed for user '{kafka.sasl_username}' "
                f"({kafka.sasl_mechanism or 'no SASL mechanism set'}) at "
                f"{kafka.bootstrap_servers}; check STREAMML_KAFKA_SASL_USERNAME, "
                "STREAMML_KAFKA_SASL_PASSWORD and STREAMML_KAFKA_SASL_MECHANISM"
            )
        if code == KafkaError._SSL and "certificate verify failed" in text:
            ca = kafka.ssl_ca_location or "the system CA store"
            return (
                f"TLS: certificate verify failed against CA {ca} for "
                f"{kafka.bootstrap_servers}; check STREAMML_KAFKA_SSL_CA_LOCATION"
            )
        if code == KafkaError._SSL:
            return f"TLS handshake with {kafka.bootstrap_servers} failed: {_tail(text)}"
    return None


def _tail(text: str) -> str:
    # "sasl_ssl://host:port/bootstrap: SSL handshake failed: ..." -> the part after the host
    return text.split(": ", 1)[-1][:300]
