"""The container smoke test: `make image`, then docker-compose.yml's Kafka, topic set-up,
models job, the four services and the synthetic producer as podman containers.

Claims: every service container's own health check passes; each valid event the producer
sent has exactly one prediction; each malformed one is a dead letter; ``podman stop``
(SIGTERM) stops every service with exit code 0. The Kafka and schema-registry images of
the compose file cannot be pulled here: Kafka is the image `make image` builds from the
Maven Central jars (same variables as apache/kafka), and the services run without a
registry (single-object Avro encoding), which the env file says. Skips with one line where
podman or runc is not installed (.ci/run installs both).
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamml.broker import free_port
from streamml.codec import AvroCodec
from tests.containers.stack import ROOT, PodmanStack, podman_env, render
from tests.kafkatest import consume_all

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.timeout(1800)]

SERVICES = ("features", "scorer", "drift", "performance")
PRODUCER_SECONDS = 30  # the producer's least: labels need time to arrive
_SENT = re.compile(r"sent (\d+) events \(\+(\d+) duplicates, (\d+) malformed\)")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install podman runc)")
    return podman_env(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def images(env: dict[str, str]) -> dict[str, str]:
    """`make image`'s script: the streamml image and the Kafka image (built when needed)."""
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "containers" / "build-images.sh")],
        env={**env, "CONTAINER_ENGINE": "podman", "PYTHON": str(Path(_python()))},
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    built = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    print(f"images built in {time.monotonic() - started:.0f}s: {built}")
    return built


def _python() -> str:
    import sys

    return sys.executable


@pytest.fixture
def stack(
    env: dict[str, str], images: dict[str, str], tmp_path: Path
) -> Iterator[tuple[PodmanStack, int]]:
    prefix = f"streamml-ci-{uuid.uuid4().hex[:6]}-"
    env_file = tmp_path / "streamml.env"
    # What a user's env file holds; no registry image can be pulled here, so no registry.
    env_file.write_text(
        "STREAMML_KAFKA_BOOTSTRAP_SERVERS=kafka:19092\n"
        "STREAMML_KAFKA_TOPIC_PREFIX=\n"
        "STREAMML_KAFKA_SECURITY_PROTOCOL=PLAINTEXT\n"
        "STREAMML_KAFKA_SCHEMA_REGISTRY_URL=\n"
        f"STREAMML_DRIFT_STATE_KEY={secrets.token_hex(16)}\n"
    )
    port = free_port()
    variables = {
        "STREAMML_ENV_FILE": str(env_file),
        "STREAMML_IMAGE": images["STREAMML_IMAGE"],
        "KAFKA_IMAGE": images["KAFKA_IMAGE"],
        "KAFKA_HOST_PORT": str(port),
        "STREAMML_DEMO_TRAIN_EVENTS": "3000",
        "STREAMML_PRODUCER_RATE": "40",
        # 2% malformed (the demo's default is 0.2%): ~24 dead letters in 1,200 events.
        "STREAMML_PRODUCER_MALFORMED": "0.02",
        "STREAMML_PRODUCER_DURATION": str(PRODUCER_SECONDS),
    }
    compose = render(variables, env, profiles=["producer"])
    stack = PodmanStack(compose=compose, prefix=prefix, env=env)
    stack.published["kafka"] = [f"127.0.0.1:{port}:9092"]
    stack.create_network_and_volumes()
    try:
        yield stack, port
    finally:
        for service in ("kafka", "topics", "models", *SERVICES, "producer"):
            if stack.name(service) in stack.started:
                print(f"--- {service}\n{stack.logs(service, tail=15)}")
        stack.down()


def test_the_stack_runs_in_containers_exactly_once_and_stops_cleanly(
    stack: tuple[PodmanStack, int],
) -> None:
    pods, port = stack
    bootstrap = f"127.0.0.1:{port}"
    pods.up("kafka")
    pods.wait_healthy("kafka", timeout_s=240)
    pods.up("topics")
    pods.up("models")
    assert pods.wait_exit("topics", timeout_s=300) == 0, pods.logs("topics")
    assert pods.wait_exit("models", timeout_s=600) == 0, pods.logs("models")

    for service in SERVICES:
        pods.up(service)
    for service in SERVICES:
        pods.wait_healthy(service, timeout_s=240)

    pods.up("producer")
    assert pods.wait_exit("producer", timeout_s=PRODUCER_SECONDS + 300) == 0, pods.logs("producer")
    found = _SENT.findall(pods.logs("producer", tail=5))
    assert found, pods.logs("producer")
    valid, _duplicates, malformed = (int(n) for n in found[-1])
    assert valid > 0 and malformed > 0

    codec = AvroCodec()
    events = {
        codec.decode(m.value(), "Event")["event_id"]
        for m in consume_all(bootstrap, "events", timeout_s=60)
        if _decodes(codec, m.value(), "Event")
    }
    predictions = Counter(
        codec.decode(m.value(), "Prediction")["event_id"]
        for m in consume_all(bootstrap, "predictions", expect=valid, timeout_s=300)
    )
    assert len(predictions) == valid, f"{len(predictions)} predicted of {valid} sent"
    assert max(predictions.values()) == 1, predictions.most_common(3)
    assert set(predictions) <= events
    dead = consume_all(bootstrap, "events.dlq", expect=malformed, timeout_s=120)
    assert len(dead) == malformed
    assert consume_all(bootstrap, "features.dlq", timeout_s=15, idle_s=3) == []

    for service in SERVICES:
        assert pods.healthy(service), pods.logs(service)
    for service in SERVICES:
        code = pods.stop(service, timeout_s=60)
        assert code == 0, f"{service} exited {code} on SIGTERM: {pods.logs(service)}"


def _decodes(codec: AvroCodec, value: bytes | None, schema: str) -> bool:
    try:
        codec.decode(value or b"", schema)
    except Exception:
        return False
    return True
