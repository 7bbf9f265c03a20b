"""docker-compose.yml: it parses, every long-running service has a health check, the four
services come from the one Dockerfile and use the schema registry, and every file it
mounts exists. (No Docker engine here: this is what can be checked without one.)"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.unit.deploy.support import ROOT

SERVICES = ("features", "scorer", "drift", "performance")


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


def test_services_share_one_image_bind_all_interfaces_and_use_the_registry(
    compose: dict[str, Any],
) -> None:
    for name in SERVICES:
        body = compose["services"][name]
        assert body["build"] == "." and body["image"] == "streamml:local"
        assert body["command"] == ["python", "-m", f"services.{name}"]
        env = body["environment"]
        assert env["STREAMML_KAFKA_SCHEMA_REGISTRY_URL"] == "http://schema-registry:8081"
        assert env["STREAMML_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"
        assert env[f"STREAMML_{name.upper()}_HTTP__HOST"] == "0.0.0.0"
        assert str(env[f"STREAMML_{name.upper()}_HTTP__PORT"]) == "8000"
        assert "8000" in " ".join(body["healthcheck"]["test"])


def test_kafka_is_kraft_from_the_official_image_with_single_node_transactions(
    compose: dict[str, Any],
) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
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
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_dockerfile_runs_as_non_root_on_python_311_slim() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[0] == "*" or "*" in ignore
    for needed in ("!libs/", "!services/", "!schemas/", "!pyproject.toml"):
        assert needed in ignore
