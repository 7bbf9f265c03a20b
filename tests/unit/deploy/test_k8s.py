"""k8s/: every manifest validates against the Kubernetes API schemas (kubernetes-validate,
which bundles them, so no network is needed; strict: unknown fields fail), and the
deployment rules hold: probes on the health endpoints, requests and limits, config from the
ConfigMap and Kafka credentials from a Secret, a PodDisruptionBudget and a metrics Service
per service, replicas (and KEDA's maximum) bounded by the input topic's partitions.

KEDA's ScaledObject/TriggerAuthentication are custom resources without bundled schemas;
they get structural checks here instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamml.topics import load_topic_specs
from tests.unit.deploy.support import ROOT

K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.30.0"
SERVICES = {"features": "events", "scorer": "features", "drift": "features",
            "performance": "predictions"}  # fmt: skip
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}


def _kustomization_docs(folder: Path) -> list[dict[str, Any]]:
    """Every resource a kustomization (and its components/bases) lists, in order."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
        path = (folder / entry).resolve()
        assert path.exists(), f"{folder}/kustomization.yaml lists missing {entry}"
        if path.is_dir():
            docs.extend(_kustomization_docs(path))
        else:
            docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _kustomization_docs(K8S / "base")


@pytest.fixture(scope="module")
def keda() -> list[dict[str, Any]]:
    return _kustomization_docs(K8S / "overlays" / "keda")


def _of(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def test_every_manifest_validates_against_the_kubernetes_schemas(
    keda: list[dict[str, Any]],
) -> None:
    checked = 0
    for doc in keda:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 15


def test_the_validator_rejects_a_broken_deployment(base: list[dict[str, Any]]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(_of(base, "Deployment")["features"]))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = yaml.safe_load(yaml.safe_dump(_of(base, "Deployment")["features"]))
    unknown["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


def test_one_deployment_per_service_with_probes_resources_config_and_secret(
    base: list[dict[str, Any]],
) -> None:
    deployments = _of(base, "Deployment")
    assert set(deployments) == set(SERVICES)
    config_replicas = _of(base, "ConfigMap")["streamml-config"]["data"][
        "STREAMML_TOPICS_REPLICATION_FACTOR"
    ]
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", f"services.{name}"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), name
        sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert sources == {"streamml-config", "streamml-kafka-credentials"}
        env = {item["name"]: item for item in container["env"]}
        assert env[f"STREAMML_{name.upper()}_HTTP__HOST"]["value"] == "0.0.0.0"
        # State changelogs the runtime creates get the cluster's replication, like the topics.
        replicas = env[f"STREAMML_{name.upper()}_RUNTIME__CHANGELOG_REPLICATION_FACTOR"]
        assert replicas["value"] == config_replicas
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"


def test_replicas_do_not_exceed_the_input_partitions(
    base: list[dict[str, Any]], keda: list[dict[str, Any]]
) -> None:
    partitions = {spec.name: spec.partitions for spec in load_topic_specs()}
    for name, deployment in _of(base, "Deployment").items():
        assert 1 <= deployment["spec"]["replicas"] <= partitions[SERVICES[name]], name
    for name, scaled in _of(keda, "ScaledObject").items():
        assert scaled["spec"]["maxReplicaCount"] <= partitions[SERVICES[name]], name


def test_every_service_has_a_pdb_and_a_metrics_service(base: list[dict[str, Any]]) -> None:
    deployments = _of(base, "Deployment")
    pdbs, services = _of(base, "PodDisruptionBudget"), _of(base, "Service")
    for name, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = pdbs[name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        assert services[name]["spec"]["selector"].items() <= pod_labels.items()
        assert services[name]["spec"]["ports"][0]["port"] == 8000


def test_kafka_credentials_are_secrets_and_settings_a_configmap(base: list[dict[str, Any]]) -> None:
    config = _of(base, "ConfigMap")["streamml-config"]["data"]
    assert not any("PASSWORD" in key or "SECRET" in key for key in config)
    secret = _of(base, "Secret")["streamml-kafka-credentials"]["stringData"]
    assert {"STREAMML_KAFKA_SASL_USERNAME", "STREAMML_KAFKA_SASL_PASSWORD"} <= set(secret)
    drift = _of(base, "Deployment")["drift"]["spec"]["template"]["spec"]["containers"][0]
    key = next(e for e in drift["env"] if e["name"] == "STREAMML_DRIFT_STATE_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == "streamml-drift-state-key"


def test_keda_scaled_objects_target_the_deployments_on_their_own_lag(
    keda: list[dict[str, Any]],
) -> None:
    deployments = _of(keda, "Deployment")
    auth = _of(keda, "TriggerAuthentication")
    scaled = _of(keda, "ScaledObject")
    assert set(scaled) == set(SERVICES)
    for name, body in scaled.items():
        assert body["apiVersion"] == "keda.sh/v1alpha1"
        assert body["spec"]["scaleTargetRef"]["name"] in deployments
        (trigger,) = body["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == name  # the runtime's default group id
        assert trigger["metadata"]["topic"] == SERVICES[name]
        assert int(trigger["metadata"]["lagThreshold"]) > 0
        assert trigger["authenticationRef"]["name"] in auth


def test_monitoring_kustomization_generates_from_the_files_compose_mounts() -> None:
    folder = K8S / "monitoring"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    files = [f for gen in kustomization["configMapGenerator"] for f in gen["files"]]
    assert set(files) == {"alerts.yml", "grafana/dashboards/streamml.json"}
    for name in files:
        assert (folder / name).is_file(), name
