"""Features and scorer at N instances on the real broker: one added, one SIGKILLed mid-stream.

Three instances each of features and scorer share 4 partitions (each with its own
instance id, so its own transactional id). While events flow, a fourth instance of each
joins the group and one of the first three of each is SIGKILLed; the consumer groups
rebalance twice. The committed outputs still hold every accepted event exactly once.

Not covered here (issue 17, not done): drift and performance at N instances in the same
run, compared with a single-instance run (performance cannot yet run as N replicas:
docs/decisions/performance-scale-out.md).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from services.scorer.artifact import generate_keypair, load_private_key
from services.scorer.training import train_and_sign
from tests.integration.runtime_support import CODEC, BackgroundProducer, make_events
from tests.kafkatest import ServiceProcess, consume_all, create_topics, free_port

pytestmark = [pytest.mark.integration, pytest.mark.eos]

PARTITIONS = 4
N_EVENTS = 6000


def _instance(
    name: str, instance: str, bootstrap: str, prefix: str, logs: Path, extra: dict[str, str]
) -> ServiceProcess:
    port = free_port()
    env_prefix = f"STREAMML_{name.upper()}_"
    env = {
        "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
        f"{env_prefix}HTTP__PORT": str(port),
        f"{env_prefix}RUNTIME__INSTANCE_ID": instance,
        f"{env_prefix}RUNTIME__SESSION_TIMEOUT_MS": "6000",
        f"{env_prefix}RUNTIME__BATCH_MAX_RECORDS": "100",
        # The killed instance's open transaction blocks read_committed readers of its
        # partitions until the broker aborts it: 10 s here instead of the default 60 s.
        f"{env_prefix}RUNTIME__TRANSACTION_TIMEOUT_MS": "10000",
        **extra,
    }
    return ServiceProcess(
        ["-m", f"services.{name}"], env, http_port=port, log_path=logs / f"{name}-{instance}.log"
    )


def _owned(proc: ServiceProcess, topic: str) -> list[str]:
    try:
        _, status = proc.http("/readyz")
    except OSError:  # its HTTP server is not up yet
        return []
    return [p for p in status.get("partitions", []) if p.startswith(f"{topic}:")]


def _ids(messages: list, schema: str) -> Counter[str]:
    return Counter(CODEC.decode(m.value(), schema)["event_id"] for m in messages)


def test_instances_added_and_killed_mid_stream_keep_predictions_exactly_once(
    kafka_bootstrap: str, topic_prefix: str, logs_dir: Path, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    private_key, public_key = generate_keypair(tmp_path / "keys")
    train_and_sign(events=3000, seed=7, out=tmp_path / "models",
                   key=load_private_key(private_key))  # fmt: skip
    scorer_env = {
        "STREAMML_SCORER_MODEL_DIR": str(tmp_path / "models"),
        "STREAMML_SCORER_PUBLIC_KEY_PATH": str(public_key),
    }
    envs = {"features": {}, "scorer": scorer_env}
    inputs = {"features": f"{topic_prefix}events", "scorer": f"{topic_prefix}features"}

    def start(name: str, instance: str) -> ServiceProcess:
        extra = envs[name]
        return _instance(name, instance, kafka_bootstrap, topic_prefix, logs_dir, extra).start()

    procs = {name: [start(name, f"{name[0]}{i}") for i in range(3)] for name in envs}
    added: dict[str, ServiceProcess] = {}
    events = make_events(N_EVENTS, seed=31, n_entities=300)
    feeder = BackgroundProducer(kafka_bootstrap, f"{topic_prefix}events", events, chunks=120)
    try:
        for group in procs.values():
            for proc in group:
                proc.wait_ready(120)
        feeder.start()
        time.sleep(4)
        for name in envs:
            added[name] = start(name, f"{name[0]}3")
        time.sleep(2)
        for name in envs:
            procs[name][1].kill()  # SIGKILL: its open transaction is aborted by the broker
        sent_at_kill = feeder.sent
        # Input was still arriving at the kill, so the killed instances had work to lose.
        # (Counting predictions here instead raced the pipeline: the count ran on while the
        # stream finished, and one clean-clone CI run saw all 6,000 before it returned.)
        assert sent_at_kill < N_EVENTS, "the kill came after the feed ended; nothing was tested"

        # The added instances take part: each owns input partitions after the rebalances.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            owned = {name: _owned(added[name], inputs[name]) for name in envs}
            if all(owned.values()):
                break
            time.sleep(0.5)
        assert all(owned.values()), f"an added instance owns no input partition: {owned}"

        feeder.join(300)
        assert feeder.error is None, feeder.error
        dead = consume_all(kafka_bootstrap, f"{topic_prefix}events.dlq", idle_s=2)
        expected = {e["event_id"] for e in events} - set(_ids(dead, "Event"))
        assert len(expected) > 0.9 * N_EVENTS
        predictions = consume_all(
            kafka_bootstrap, f"{topic_prefix}predictions", expect=len(expected), timeout_s=300
        )
        vectors = consume_all(kafka_bootstrap, f"{topic_prefix}features", idle_s=2)
    finally:
        for proc in [*procs["features"], *procs["scorer"], *added.values()]:
            proc.stop()
    for name, ids in (("features", _ids(vectors, "FeatureVector")),
                      ("predictions", _ids(predictions, "Prediction"))):  # fmt: skip
        duplicated = [eid for eid, n in ids.items() if n > 1]
        assert not duplicated, f"{name}: {len(duplicated)} duplicated, e.g. {duplicated[:3]}"
        assert set(ids) == expected, f"{name}: {len(expected - set(ids))} missing"
