"""A small service on the runtime for the operator-tool tests (no tests in this module).

``python -m tests.integration.test_ops_support`` consumes ``events`` and writes one Label
per event to ``ops.out``; an event whose amount is above ``STREAMML_OPSTEST_MAX_AMOUNT``
is rejected (``validation.amount``) and so dead-lettered. Restarting it with a higher
limit is the "fix" before a redrive.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamml.logs import configure_logging
from streamml.processor import Output, Processor, Record, Rejection, Result
from streamml.settings import HttpSettings, KafkaSettings, RuntimeSettings, load_settings
from streamml.state import State
from tests.kafkatest import ServiceProcess, free_port

SERVICE = "ops-test"
OUTPUT = "ops.out"


class AmountLimitProcessor(Processor):
    """Passes events up to ``max_amount``; rejects the others."""

    def __init__(self, output: str, max_amount: float) -> None:
        self.output = output
        self.max_amount = max_amount

    def process(self, records: Sequence[Record], state: State) -> Result:
        result = Result()
        for record in records:
            event = record.value
            amount = event["payload"]["amount"]
            if amount > self.max_amount:
                result.rejections.append(
                    Rejection(record, "validation.amount", f"amount {amount} > {self.max_amount}")
                )
                continue
            result.outputs.append(
                Output(
                    self.output,
                    "Label",
                    {
                        "event_id": event["event_id"],
                        "entity_id": event["entity_id"],
                        "label": 1,
                        "labeled_at": event["event_time"],
                        "source": "redriven" if record.is_replay else "original",
                    },
                    key=record.key,
                    headers=record.replay_headers(),
                )
            )
        return result


class OpsTestSettings(BaseSettings):
    """Env prefix STREAMML_OPSTEST_."""

    model_config = SettingsConfigDict(env_prefix="STREAMML_OPSTEST_", env_nested_delimiter="__")

    max_amount: float = Field(default=100.0, description="Largest amount accepted.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)


def ops_test_process(
    bootstrap: str, prefix: str, logs: Path, *, max_amount: float, instance: str = "a"
) -> ServiceProcess:
    """The service as a child process (not started)."""
    port = free_port()
    env = {
        "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMML_KAFKA_TOPIC_PREFIX": prefix,
        "STREAMML_OPSTEST_MAX_AMOUNT": str(max_amount),
        "STREAMML_OPSTEST_HTTP__PORT": str(port),
        "STREAMML_OPSTEST_RUNTIME__INSTANCE_ID": instance,
        "STREAMML_OPSTEST_RUNTIME__SESSION_TIMEOUT_MS": "6000",
    }
    return ServiceProcess(
        ["-m", "tests.integration.test_ops_support"],
        env,
        http_port=port,
        log_path=logs / f"ops-test-{instance}-{max_amount:g}.log",
    )


def main() -> None:
    from streamml.runtime import StreamRuntime

    settings = load_settings(OpsTestSettings)
    configure_logging("INFO", service=SERVICE)
    kafka = settings.kafka
    runtime = StreamRuntime(
        service=SERVICE,
        processor=AmountLimitProcessor(kafka.topic(OUTPUT), settings.max_amount),
        inputs={kafka.topic("events"): "Event"},
        kafka=kafka,
        settings=settings.runtime,
        http=settings.http,
    )
    sys.exit(runtime.run())


if __name__ == "__main__":
    main()


def ops_cli(bootstrap: str, prefix: str, *args: str) -> Any:
    """Run an operator command in-process, as `streamml <args>` would; returns the Result."""
    import typer
    from typer.testing import CliRunner

    from streamml.ops.cli import register

    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, [*args, "--bootstrap", bootstrap, "--prefix", prefix])


def produce_timed(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes, list[tuple[str, bytes]], int]],
    *,
    partition: int,
) -> None:
    """Produce (key, value, headers, timestamp_ms) records to one partition, in order."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    errors: list[str] = []
    for key, value, headers, timestamp in records:
        producer.produce(
            topic,
            key=key,
            value=value,
            headers=headers,
            partition=partition,
            timestamp=timestamp,
            on_delivery=lambda err, _m: errors.append(err.str()) if err else None,
        )
    assert producer.flush(30) == 0 and not errors, errors
