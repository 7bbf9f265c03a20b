"""Operator commands of the drift service (``streamml drift ...``).

* ``describe-reference`` - what live traffic is compared with: model, fingerprint, bins,
  sample sizes, categories, expected positive share;
* ``episodes`` - the open alert episodes and the windows waiting for partitions, read
  from the service's committed state (changelog), verified with the state key.

A bad argument prints one line ``error: ...`` and exits 2; an unreachable broker exits 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from services.drift.settings import DriftSettings
from streamml.commandline import command_group, fail, settings_or_fail
from streamml.errors import ConfigError

app = command_group(
    "drift",
    "Drift service: reference description, open alert episodes.",
)


def _settings() -> DriftSettings:
    return settings_or_fail(DriftSettings)


@app.command("describe-reference")
def describe_reference(
    path: Annotated[
        Path | None,
        typer.Argument(help="Model dir, metadata.json or reference JSON (default: settings)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Describe the training reference the drift tests use."""
    from services.drift.reference import load_reference

    try:
        ref = load_reference(path or _settings().reference_path)
    except ConfigError as exc:
        fail(str(exc))
    monitored = {**ref.numeric, **({"score": ref.score} if ref.score else {})}
    summary: dict[str, Any] = {
        "fingerprint": ref.fingerprint,
        "model_name": ref.model_name,
        "model_version": ref.model_version,
        "threshold": ref.threshold,
        "expected_positive_share": ref.positive_rate,
        "inputs": len(ref.input_names),
        "numeric": {
            name: {
                "psi_bins": r.bins,
                "ks_grid": len(r.ks_grid),
                "sample": r.sample_size,
                "mean": r.mean,
                "std": r.std,
            }
            for name, r in monitored.items()
        },
        "categorical": {name: list(c.categories) for name, c in ref.categorical.items()},
        "unmonitored_inputs": [n for n in ref.input_names if n not in ref.numeric],
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"reference {ref.fingerprint}  model {ref.model_name}/{ref.model_version}  "
        f"threshold {ref.threshold}  expected positive share {ref.positive_rate}"
    )
    for name, info in summary["numeric"].items():
        typer.echo(
            f"  {name:<28} bins {info['psi_bins']:>3}  ks grid {info['ks_grid']:>3}  "
            f"sample {info['sample']:>6}  mean {info['mean']:.4g}  std {info['std']:.4g}"
        )
    for name, values in summary["categorical"].items():
        typer.echo(f"  {name:<28} categories {len(values)}: {', '.join(values[:8])}")
    if summary["unmonitored_inputs"]:
        typer.echo(f"  no reference for: {', '.join(summary['unmonitored_inputs'])}")


@app.command("episodes")
def episodes(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    timeout_s: Annotated[float, typer.Option(help="Give up reading after this long.")] = 30.0,
) -> None:
    """Open alert episodes and pending windows, from the committed episode state."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

    from services.drift.processor import EPISODE_STORE
    from services.drift.statecodec import StateCodec, StateIntegrityError
    from streamml.runtime.clients import changelog_topic, group_id_of, make_reader

    settings = _settings()
    group = group_id_of("drift", settings.kafka, settings.runtime)
    topic = changelog_topic(group, EPISODE_STORE)
    consumer = make_reader(settings.kafka, group_id=f"{group}-cli")
    latest: bytes | None = None
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            fail(f"no episode state yet ({topic} does not exist)", 1)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        while True:
            msg = consumer.poll(timeout_s)
            if msg is None:
                fail(f"timed out reading {topic}", 1)
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                fail(f"reading {topic}: {error.str()}", 1)
            if msg.key() == b"tracker":
                latest = msg.value()
    except KafkaException as exc:
        fail(f"cannot read {topic}: {exc}", 1)
    finally:
        consumer.close()
    if latest is None:
        fail("no episode state yet", 1)
    try:
        document = StateCodec(settings.state_key.get_secret_value().encode()).loads(latest)
    except StateIntegrityError as exc:
        fail(f"{exc} (is STREAMML_DRIFT_STATE_KEY the service's key?)")
    tracker = document["tracker"]
    pending = {stream: sorted(int(w) for w in book["pending"])
               for stream, book in tracker["streams"].items()}  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"episodes": tracker["episodes"], "pending_windows": pending}))
        return
    if not tracker["episodes"]:
        typer.echo("no open episodes")
    for episode in tracker["episodes"].values():
        typer.echo(
            f"{episode['alert_id']}: {episode['severity']} since window "
            f"{episode['opened_window']}, fired in {episode['windows_fired']} window(s), "
            f"detectors {','.join(episode['detectors'])}, clean for {episode['clean']}"
        )
    for stream, windows in pending.items():
        if windows:
            typer.echo(f"{stream}: windows waiting for partitions: {windows}")
