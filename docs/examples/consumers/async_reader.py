"""Every prediction as it comes, in asyncio on aiokafka (streamml.client.AsyncReader)."""

import asyncio

from streamml.client import AsyncReader, Prediction


async def main() -> None:
    async with AsyncReader(Prediction, "predictions", group_id="example-async-reader") as reader:
        async for record in reader:  # committed records only; commits after handling
            p = record.value
            print(f"{p.event_id} {p.model_version} {p.score}", flush=True)


asyncio.run(main())
