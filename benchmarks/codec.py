"""Throughput of the Avro codec on one Event, against fastavro on the same record.

No broker: the codec alone, in this process. Each round times ``--records`` encodes and
decodes of one Event (the shape upstream producers send) with :class:`AvroCodec` (its
framing, compiled writer and reader) and, as the same-run
baseline, fastavro's ``schemaless_writer``/``schemaless_reader`` on the same parsed schema
(the body only, no framing). The rounds are interleaved; the figures are the medians.

Usage: ``python -m benchmarks.codec [--records 20000] [--rounds 5]``.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import fastavro

from streamml.codec import AvroCodec

EPOCH_MS = 1_795_000_000_000
EVENT: dict[str, Any] = {
    "event_id": "0b7c5a2e-9b61-4d59-8a7e-3f0f4e1c2d11",
    "entity_id": "card-42",
    "event_time": EPOCH_MS,
    "event_type": "card_transaction",
    "payload": {
        "amount": 12.5,
        "currency": "EUR",
        "merchant_id": "m-1",
        "merchant_category": "5411",
        "country": "DE",
        "channel": "pos",
        "card_present": True,
        "device_age_days": None,
        "customer_age_years": 41,
    },
    "produced_at": EPOCH_MS + 3,
}


def _rate(n: int, call: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return n / (time.perf_counter() - start)


def _fastavro_calls(codec: AvroCodec) -> tuple[Callable[[], object], Callable[[], object]]:
    parsed = codec.parsed("Event")
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, EVENT)
    body = buffer.getvalue()

    def encode() -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, EVENT)
        return out.getvalue()

    def decode() -> object:
        return fastavro.schemaless_reader(io.BytesIO(body), parsed, parsed)

    return encode, decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()
    if args.records < 1000 or args.rounds < 1:
        parser.error("need --records >= 1000 and --rounds >= 1")
    codec = AvroCodec()
    data = codec.encode("Event", EVENT)
    fa_encode, fa_decode = _fastavro_calls(codec)
    calls: dict[str, Callable[[], object]] = {
        "codec_encode": lambda: codec.encode("Event", EVENT),
        "codec_decode": lambda: codec.decode(data, "Event"),
        "fastavro_encode": fa_encode,
        "fastavro_decode": fa_decode,
    }
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            rounds[name].append(_rate(args.records, call))
    medians = {f"{name}_per_s": round(statistics.median(r)) for name, r in rounds.items()}
    results: dict[str, Any] = {
        "benchmark": "codec",
        "schema": "Event",
        "bytes": len(data),
        "records": args.records,
        "rounds": args.rounds,
        "method": "records/s per call kind, median of interleaved rounds; baseline: fastavro "
        "schemaless writer/reader on the same record (body only)",
        **medians,
        "encode_vs_fastavro": round(
            medians["codec_encode_per_s"] / medians["fastavro_encode_per_s"], 2
        ),
        "decode_vs_fastavro": round(
            medians["codec_decode_per_s"] / medians["fastavro_decode_per_s"], 2
        ),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
