"""k8s/: every kustomization (base, the KEDA overlay, monitoring) is rendered with kustomize
and every manifest it renders validates offline: Kubernetes kinds against the API schemas
kubernetes-validate bundles (strict: unknown fields fail), KEDA's custom resources against
the schemas in tests/unit/deploy/schemas (the CRD fields streamml uses; unknown fields
fail). And the deployment rules hold: probes consistent with the runtime (alive while
restoring, ready after), requests and limits, config from the ConfigMap and Kafka
credentials from a Secret, a PodDisruptionBudget and a metrics Service per service,
replicas (and KEDA's maximum) bounded by the input topic's partitions, and under KEDA no
``replicas`` and triggers that read the same ConfigMap as the Deployments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamml.topics import load_topic_specs
from tests.unit.deploy.support import ROOT, kustomize

K8S = ROOT / "k8s"
SCHEMAS = Path(__file__).parent / "schemas"
KUBERNETES_VERSION = "1.30.0"
SERVICES = {"features": "events", "scorer": "features", "drift": "features",
            "performance": "predictions"}  # fmt: skip
CUSTOM_SCHEMAS = {
    "ScaledObject": "keda-scaledobject-v1alpha1.json",
    "TriggerAuthentication": "keda-triggerauthentication-v1alpha1.json",
}
OVERLAYS = ("base", "overlays/keda", "monitoring")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(K8S / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def base(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rendered["base"]


@pytest.fixture(scope="module")
def keda(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rendered["overlays/keda"]


def _of(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _validate(doc: dict[str, Any]) -> None:
    """Raises when ``doc`` does not validate against its kind's schema."""
    if doc["kind"] in CUSTOM_SCHEMAS:
        schema = json.loads((SCHEMAS / CUSTOM_SCHEMAS[doc["kind"]]).read_text())
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_rendered_manifest_of_every_kustomization_validates(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    kinds: set[str] = set()
    for name, docs in rendered.items():
        assert docs, f"{name} renders nothing"
        for doc in docs:
            _validate(doc)
            kinds.add(doc["kind"])
    assert {"Deployment", "Job", "ConfigMap", "Secret", "ScaledObject",
            "TriggerAuthentication"} <= kinds  # fmt: skip
    assert sum(len(docs) for docs in rendered.values()) >= 30


def test_the_validators_reject_broken_manifests(keda: list[dict[str, Any]]) -> None:
    def copy(doc: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(doc))

    broken = copy(_of(keda, "Deployment")["features"])
    broken["spec"]["replicas"] = "two"
    unknown = copy(_of(keda, "Deployment")["features"])
    unknown["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    for doc in (broken, unknown):
        with pytest.raises(kubernetes_validate.ValidationError):
            _validate(doc)
    typo = copy(_of(keda, "ScaledObject")["scorer"])
    typo["spec"]["triggers"][0]["authRef"] = typo["spec"]["triggers"][0].pop("authenticationRef")
    not_text = copy(_of(keda, "ScaledObject")["scorer"])
    not_text["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5000
    no_name = copy(_of(keda, "TriggerAuthentication")["streamml-kafka"])
    del no_name["spec"]["secretTargetRef"][0]["key"]
    for doc in (typo, not_text, no_name):
        with pytest.raises(jsonschema.ValidationError):
            _validate(doc)


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


def _window_s(probe: dict[str, Any]) -> int:
    """How long a probe tolerates failures before it acts."""
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


def test_probes_keep_a_restoring_instance_alive_and_out_of_service(
    base: list[dict[str, Any]],
) -> None:
    """The runtime answers /healthz 200 while it restores (progress counts as alive) and
    /readyz 503 until the restore completes: liveness and startup read /healthz, readiness
    /readyz, and neither liveness nor startup gives up quickly on a loaded node."""
    for name, deployment in _of(base, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        startup, liveness = container["startupProbe"], container["livenessProbe"]
        readiness = container["readinessProbe"]
        assert startup["httpGet"]["path"] == liveness["httpGet"]["path"] == "/healthz", name
        assert readiness["httpGet"]["path"] == "/readyz", name
        assert _window_s(startup) >= 300, name
        assert _window_s(liveness) >= 120, name
        assert liveness["timeoutSeconds"] >= 3, name
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= 30, name  # SIGTERM finishes the batch and commits


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


def test_keda_owns_the_replica_count(
    base: list[dict[str, Any]], keda: list[dict[str, Any]]
) -> None:
    assert all("replicas" in d["spec"] for d in _of(base, "Deployment").values())
    for name, deployment in _of(keda, "Deployment").items():
        assert "replicas" not in deployment["spec"], f"{name} keeps replicas under KEDA"


def _triggers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, body in _of(docs, "ScaledObject").items():
        (trigger,) = body["spec"]["triggers"]
        out[name] = trigger
    return out


def test_keda_scaled_objects_target_the_deployments_on_their_own_lag(
    keda: list[dict[str, Any]],
) -> None:
    deployments = _of(keda, "Deployment")
    auth = _of(keda, "TriggerAuthentication")
    config = _of(keda, "ConfigMap")["streamml-config"]["data"]
    scaled = _of(keda, "ScaledObject")
    assert set(scaled) == set(SERVICES)
    prefix = config["STREAMML_KAFKA_TOPIC_PREFIX"]
    for name, trigger in _triggers(keda).items():
        assert scaled[name]["spec"]["scaleTargetRef"]["name"] in deployments
        assert trigger["type"] == "kafka"
        metadata = trigger["metadata"]
        assert metadata["bootstrapServers"] == config["STREAMML_KAFKA_BOOTSTRAP_SERVERS"]
        assert metadata["consumerGroup"] == f"{prefix}{name}"  # the runtime's default group id
        assert metadata["topic"] == f"{prefix}{SERVICES[name]}"
        assert int(metadata["lagThreshold"]) > 0
        assert trigger["authenticationRef"]["name"] in auth


def test_keda_triggers_follow_a_changed_configmap(tmp_path: Path) -> None:
    """Change only the ConfigMap: the triggers' brokers, groups and topics follow."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    config_path = copy / "base" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["data"]["STREAMML_KAFKA_BOOTSTRAP_SERVERS"] = "b-1.example:9096,b-2.example:9096"
    config["data"]["STREAMML_KAFKA_TOPIC_PREFIX"] = "prod.eu."
    config_path.write_text(yaml.safe_dump(config))
    for name, trigger in _triggers(kustomize(copy / "overlays" / "keda")).items():
        metadata = trigger["metadata"]
        assert metadata["bootstrapServers"] == "b-1.example:9096,b-2.example:9096"
        assert metadata["consumerGroup"] == f"prod.eu.{name}"
        assert metadata["topic"] == f"prod.eu.{SERVICES[name]}"


def test_monitoring_kustomization_generates_from_the_files_compose_mounts(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    folder = K8S / "monitoring"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    files = [f for gen in kustomization["configMapGenerator"] for f in gen["files"]]
    assert set(files) == {"alerts.yml", "grafana/dashboards/streamml.json"}
    maps = _of(rendered["monitoring"], "ConfigMap")
    assert (
        maps["streamml-prometheus-rules"]["data"]["alerts.yml"]
        == (folder / "alerts.yml").read_text()
    )
    dashboard = maps["streamml-grafana-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["streamml.json"])["title"]
