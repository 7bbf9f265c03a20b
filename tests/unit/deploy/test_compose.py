"""docker-compose.yml and the Dockerfile, checked without running a container (the stack
itself runs in tests/containers): the compose file parses, every long-running service has a
health check, the four services come from the one image, the mounted files exist; rendered
by podman-compose, every Kafka client container gets every connection setting from the
env file and no secret is in the compose file; the Dockerfile copies only what
.dockerignore lets into the build context."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamml.settings import KafkaSettings, load_settings
from tests.containers.stack import container_env, podman_env, read_env_file, render
from tests.unit.deploy.support import ROOT

SERVICES = ("features", "scorer", "drift", "performance")
KAFKA_CLIENTS = ("topics", *SERVICES, "producer")
EXAMPLE_ENV = ROOT / "containers" / "streamml.env.example"
# Every connection setting: the fields of KafkaSettings, as environment variables.
CONNECTION = tuple(f"STREAMML_KAFKA_{name.upper()}" for name in KafkaSettings.model_fields)
SECRETS = ("STREAMML_KAFKA_SASL_PASSWORD", "STREAMML_KAFKA_SSL_KEY_PASSWORD",
           "STREAMML_KAFKA_SCHEMA_REGISTRY_BASIC_AUTH", "STREAMML_DRIFT_STATE_KEY")  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _jobs(compose: dict[str, Any]) -> set[str]:
    return {
        name
        for name, body in compose["services"].items()
        if (body.get("labels") or {}).get("streamml.role") == "job"
    }


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {*SERVICES, "kafka", "schema-registry", "prometheus", "grafana", "producer",
                "topics", "models"}  # fmt: skip
    assert expected <= set(services)
    for name, body in services.items():
        if name in _jobs(compose):
            continue
        check = body.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_jobs_are_waited_for_until_they_succeed(compose: dict[str, Any]) -> None:
    jobs = _jobs(compose)
    assert jobs == {"topics", "models"}
    for name in SERVICES:
        depends = compose["services"][name]["depends_on"]
        assert depends["topics"]["condition"] == "service_completed_successfully"
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["schema-registry"]["condition"] == "service_healthy"
    for name in ("scorer", "drift"):
        models = compose["services"][name]["depends_on"]["models"]
        assert models["condition"] == "service_completed_successfully"


def test_services_share_one_image_bind_all_interfaces_and_stop_gracefully(
    compose: dict[str, Any],
) -> None:
    for name in SERVICES:
        body = compose["services"][name]
        assert body["build"]["context"] == "."
        assert body["image"] == "${STREAMML_IMAGE:-streamml:local}"
        assert body["command"] == ["python", "-m", f"services.{name}"]
        env = body["environment"]
        assert env[f"STREAMML_{name.upper()}_HTTP__HOST"] == "0.0.0.0"
        assert str(env[f"STREAMML_{name.upper()}_HTTP__PORT"]) == "8000"
        assert "8000/healthz" in " ".join(body["healthcheck"]["test"])
        assert body["stop_grace_period"] == "60s"  # SIGTERM finishes the batch and commits


def test_kafka_is_kraft_with_single_node_transactions(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == "${KAFKA_IMAGE:-apache/kafka:3.9.1}"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):  # fmt: skip
        assert int(env[key]) == 1
    registry = compose["services"]["schema-registry"]["image"]
    assert registry.startswith(("confluentinc/cp-schema-registry:", "ghcr.io/aiven-open/karapace"))


def test_producer_is_an_optional_profile(compose: dict[str, Any]) -> None:
    producer = compose["services"]["producer"]
    assert producer["profiles"] == ["producer"]
    assert producer["command"][:3] == ["streamml", "demo", "produce"]


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, body in compose["services"].items():
        for volume in body.get("volumes", []):
            source = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_no_secret_and_no_connection_setting_is_in_the_compose_file(
    compose: dict[str, Any],
) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        assert name not in text.replace(f"# {name}", ""), f"{name} is set in docker-compose.yml"
    for name in KAFKA_CLIENTS:
        # 'environment' overrides 'env_file': a connection setting here would win silently.
        environment = compose["services"][name].get("environment") or {}
        assert not [key for key in environment if key.startswith("STREAMML_KAFKA_")], name


def test_the_example_env_file_names_every_connection_setting_and_loads() -> None:
    text = EXAMPLE_ENV.read_text()
    for name in (*CONNECTION, "STREAMML_DRIFT_STATE_KEY"):
        assert re.search(rf"^#?{name}=", text, re.M), f"{EXAMPLE_ENV.name} lacks {name}"
    values = read_env_file(EXAMPLE_ENV)
    settings = load_settings(KafkaSettings, **{
        key.removeprefix("STREAMML_KAFKA_").lower(): value
        for key, value in values.items() if key.startswith("STREAMML_KAFKA_")
    })  # fmt: skip
    assert settings.bootstrap_servers == "kafka:19092"
    assert settings.schema_registry_url == "http://schema-registry:8081"


def _full_env_file(path: Path) -> dict[str, str]:
    """An env file setting every connection variable to a value of its own."""
    values = {
        "STREAMML_KAFKA_BOOTSTRAP_SERVERS": "broker-1.example:9094,broker-2.example:9094",
        "STREAMML_KAFKA_TOPIC_PREFIX": "prod.",
        "STREAMML_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMML_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "STREAMML_DRIFT_STATE_KEY": "drift-key-from-env-file",
    }
    for name in CONNECTION:
        values.setdefault(name, f"/etc/streamml/tls/{name.lower()}")
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return values


def test_rendered_compose_gives_every_kafka_client_every_setting_of_the_env_file(
    tmp_path: Path,
) -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman-compose needs podman (apt-get install podman)")
    env_file = tmp_path / "streamml.env"
    values = _full_env_file(env_file)
    tls = tmp_path / "tls"
    tls.mkdir()
    rendered = render(
        {"STREAMML_ENV_FILE": str(env_file), "STREAMML_TLS_DIR": str(tls)},
        podman_env(tmp_path),
        profiles=["producer"],
    )
    for name in KAFKA_CLIENTS:
        service = rendered["services"][name]
        got = container_env(service)
        for key, value in values.items():
            if key == "STREAMML_DRIFT_STATE_KEY" and name != "drift":
                continue
            assert got.get(key) == value, f"{name} gets {key}={got.get(key)!r}, not {value!r}"
        mounts = [str(v) for v in service.get("volumes", [])]
        assert f"{tls}:/etc/streamml/tls:ro" in mounts, f"{name} lacks the TLS folder"
    # The same file is a valid configuration for the settings every process reads, with its
    # files where a container sees them (the TLS folder mounted at /etc/streamml/tls): the
    # settings check that a named CA, certificate or key file exists.
    inside = {key: value.replace("/etc/streamml/tls", str(tls)) for key, value in values.items()}
    for value in inside.values():
        if value.startswith(f"{tls}/"):
            Path(value).write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_settings(KafkaSettings, **{
        key.removeprefix("STREAMML_KAFKA_").lower(): value
        for key, value in inside.items() if key.startswith("STREAMML_KAFKA_")
    })  # fmt: skip
    assert settings.client_config()["sasl.mechanism"] == "SCRAM-SHA-512"


def test_dockerfile_is_multi_stage_non_root_with_a_health_check_on_any_base() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2 and all(s.startswith("FROM ${BASE_IMAGE}") for s in stages)
    assert not stages[-1].startswith("FROM ${BASE_IMAGE} AS")  # the final stage is the image
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = re.search(r"^HEALTHCHECK .*\n(?:.*\n)*?.*CMD .*", text, re.M)
    assert health and "/healthz" in health.group(0)
    assert "import services.features._native" in text  # the build fails without the C kernel


def test_dockerfile_copies_only_what_dockerignore_lets_in() -> None:
    """The broken build of issue 15: a COPY of a file the build context leaves out."""
    text = (ROOT / ".dockerignore").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied += line.split()[1:-1]
    assert copied, "no COPY in the Dockerfile"
    for source in copied:
        assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
        assert (ROOT / source).exists(), source
