"""Small processors on the runtime, used by the runtime's own tests and benchmark.

- ``passthrough``: re-encodes every Event to an output topic (the no-op baseline).
- ``counter``: a stateful running count of events per entity, emitted as a Label whose
  ``label`` is the count so far; the exactly-once tests check that every input appears
  once and that the counts per entity run 1, 2, 3, ... with no gap or repeat across kills.
  An event whose ``payload.merchant_id`` is ``"raise"`` makes it raise (a poison record).
- ``broken``: the counter as a bad deployment that raises on every record (the runtime's
  dead-letter circuit must halt it before the stream turns into dead letters).

Run one: ``python -m streamml.examples counter`` (settings from ``STREAMML_EXAMPLE_*``).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from streamml.errors import ConfigError
from streamml.processor import Output, Processor, Record, Result
from streamml.service import refuse, run_service
from streamml.settings import ServiceSettings
from streamml.state import State

_COUNT = struct.Struct(">q")


class PassthroughProcessor(Processor):
    """Writes every input Event unchanged (re-encoded) to ``output``."""

    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, records: Sequence[Record], state: State) -> Result:
        return Result(outputs=[Output(self.output, "Event", r.value, key=r.key) for r in records])


class CountingProcessor(Processor):
    """Running count of events per entity, in the changelog-backed store ``counts``."""

    stores = ("counts",)

    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, records: Sequence[Record], state: State) -> Result:
        counts = state.store("counts")
        outputs = []
        for record in records:
            event = record.value
            if event["payload"]["merchant_id"] == "raise":
                raise ValueError(f"poison record {event['event_id']}")
            key = event["entity_id"].encode()
            current = counts.get(record.partition, key)
            count = (_COUNT.unpack(current)[0] if current else 0) + 1
            counts.put(record.partition, key, _COUNT.pack(count))
            outputs.append(
                Output(
                    self.output,
                    "Label",
                    {
                        "event_id": event["event_id"],
                        "entity_id": event["entity_id"],
                        "label": count,
                        "labeled_at": event["event_time"],
                        "source": "counter",
                    },
                    key=record.key,
                )
            )
        return Result(outputs=outputs)


class BrokenProcessor(CountingProcessor):
    """A bad deployment: raises on every record (the dead-letter circuit must halt it)."""

    def process(self, records: Sequence[Record], state: State) -> Result:
        raise RuntimeError(f"broken deployment: cannot handle {records[0].value['event_id']}")


class ExampleSettings(ServiceSettings):
    """Settings of the example processors. Env prefix ``STREAMML_EXAMPLE_``."""

    model_config = SettingsConfigDict(env_prefix="STREAMML_EXAMPLE_")

    input_topic: str = Field(default="events", description="Logical input topic (Event).")
    output_topic: str = Field(default="example.out", description="Logical output topic.")


KINDS: dict[str, type[Processor]] = {
    "passthrough": PassthroughProcessor,
    "counter": CountingProcessor,
    "broken": BrokenProcessor,
}


def main(argv: Sequence[str] | None = None) -> None:
    from streamml.runtime import StreamRuntime

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in KINDS:
        sys.exit(refuse(ConfigError(f"usage: python -m streamml.examples {{{'|'.join(KINDS)}}}")))
    service = f"example-{args[0]}"

    def build(settings: ExampleSettings) -> StreamRuntime:
        kafka = settings.kafka
        processor = KINDS[args[0]](kafka.topic(settings.output_topic))  # type: ignore[call-arg]
        return StreamRuntime(
            service=service,
            processor=processor,
            inputs={kafka.topic(settings.input_topic): "Event"},
            kafka=kafka,
            settings=settings.runtime,
            http=settings.http,
        )

    sys.exit(run_service(service, ExampleSettings, build))


if __name__ == "__main__":
    main()
