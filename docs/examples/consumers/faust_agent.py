"""Every prediction as it comes, in a faust-streaming agent (pip install 'streamml[faust]').

Run: python faust_agent.py worker
"""

import faust

from streamml.client import Prediction
from streamml.client.faust_codec import avro
from streamml.settings import KafkaSettings

kafka = KafkaSettings()  # STREAMML_KAFKA_*: broker and topic prefix
app = faust.App("example-faust-agent", broker=f"kafka://{kafka.bootstrap_servers}",
                web_enabled=False)  # fmt: skip
predictions = app.topic(
    kafka.topic("predictions"), value_type=Prediction, value_serializer=avro(Prediction)
)


@app.agent(predictions)
async def show(stream: faust.StreamT[Prediction]) -> None:
    async for p in stream:
        print(f"{p.event_id} {p.model_version} {p.score}", flush=True)


if __name__ == "__main__":
    app.main()
