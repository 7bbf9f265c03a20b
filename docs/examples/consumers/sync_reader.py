"""Every prediction as it comes, on confluent-kafka (streamml.client.Reader)."""

from streamml.client import Prediction, Reader

# Broker, topic prefix and registry come from STREAMML_KAFKA_* (streamml.settings).
with Reader(Prediction, "predictions", group_id="example-sync-reader") as reader:
    for record in reader:  # committed records only; offsets committed after handling
        p = record.value
        print(f"{p.event_id} {p.model_version} {p.score}", flush=True)
