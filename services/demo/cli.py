"""``streamml demo run``: the whole pipeline end to end on one machine (``make demo``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="The end-to-end demo: broker, topics, models, four services, synthetic traffic, "
    "live view, summary and report.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("run")
def run(  # noqa: PLR0917 (typer maps options to parameters)
    duration: Annotated[
        float, typer.Option("--duration", help="Seconds of synthetic traffic (then drain).")
    ] = 180.0,
    rate: Annotated[float, typer.Option("--rate", help="Events per wall-clock second.")] = 200.0,
    entities: Annotated[int, typer.Option("--entities", help="Distinct cards.")] = 5000,
    drift_at: Annotated[
        float, typer.Option("--drift-at", help="Share of the duration after which drift starts.")
    ] = 0.35,
    monitor_after: Annotated[
        float,
        typer.Option(
            "--monitor-after",
            help="Share of the duration after which the drift service joins (0: from the start).",
        ),
    ] = 0.15,
    canary: Annotated[
        float, typer.Option("--canary", help="Share of cards the candidate model serves.")
    ] = 0.1,
    duplicates: Annotated[
        float, typer.Option("--duplicates", help="Share of events sent twice.")
    ] = 0.03,
    malformed: Annotated[
        float, typer.Option("--malformed", help="Share of extra malformed records.")
    ] = 0.002,
    partitions: Annotated[int, typer.Option("--partitions", help="Partitions per topic.")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic traffic.")] = 2026,
    model_seed: Annotated[
        int | None,
        typer.Option("--model-seed", help="Seed the models are trained on (default: --seed)."),
    ] = None,
    run_dir: Annotated[
        Path, typer.Option("--dir", help="Broker data, models, logs and the report.")
    ] = Path(".demo"),
    bootstrap: Annotated[
        str | None,
        typer.Option(
            "--bootstrap",
            help="Use this running broker instead of starting one (topics get a fresh prefix).",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="Topic prefix (default: none; fresh with --bootstrap)."),
    ] = None,
    headless: Annotated[
        bool, typer.Option("--headless", help="No live view: a progress line every 10 s.")
    ] = False,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="Longest wait for the pipeline to catch up.")
    ] = 90.0,
    scenario: Annotated[
        str | None,
        typer.Option(
            "--scenario",
            help="Inject this failure at --drift-at instead of the drift (control: none); "
            "no malformed records then, so every dead letter is an alert. One of: "
            "control, units, recoded-category, stuck-field, stale-partition, "
            "covariate-shift, concept-drift, worse-model, score-collapse, duplicate-storm, "
            "labels-stop.",
        ),
    ] = None,
) -> None:
    """Run the demo; exit 0 when every claim of the summary holds, 1 when one fails."""
    from services.demo.orchestrator import Demo
    from services.demo.plan import DemoPlan, new_prefix

    kafka_port = os.environ.get("KAFKA_PORT")
    if kafka_port is not None and not (kafka_port.isdigit() and 0 < int(kafka_port) < 65536):
        raise typer.BadParameter(f"KAFKA_PORT must be a port number, not {kafka_port!r}")
    if bootstrap is not None and bootstrap.rpartition(":")[2].isdigit() is False:
        raise typer.BadParameter(f"--bootstrap must be host:port, not {bootstrap!r}")
    plan = DemoPlan(
        duration_s=duration,
        rate=rate,
        entities=entities,
        drift_fraction=drift_at,
        monitor_after_fraction=monitor_after,
        canary_share=canary,
        duplicate_share=duplicates,
        malformed_share=0.0 if scenario is not None else malformed,
        partitions=partitions,
        seed=seed,
        model_seed=model_seed,
        run_dir=run_dir,
        scenario=scenario,
        bootstrap=bootstrap,
        topic_prefix=prefix if prefix is not None else (new_prefix() if bootstrap else ""),
        drain_timeout_s=drain_timeout,
    )
    problem = plan.check()
    if problem:
        raise typer.BadParameter(problem)
    code = Demo(plan, headless=headless).run()
    raise typer.Exit(code)


@app.command("produce")
def produce(  # noqa: PLR0917 (typer maps options to parameters)
    duration: Annotated[
        float, typer.Option("--duration", help="Seconds of traffic (then exit 0).")
    ] = 3600.0,
    rate: Annotated[float, typer.Option("--rate", help="Events per wall-clock second.")] = 50.0,
    entities: Annotated[int, typer.Option("--entities", help="Distinct cards.")] = 5000,
    drift_at: Annotated[
        float, typer.Option("--drift-at", help="Share of the duration after which drift starts.")
    ] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic traffic.")] = 2026,
    malformed: Annotated[
        float, typer.Option("--malformed", help="Share of extra malformed records.")
    ] = 0.002,
) -> None:
    """Only the synthetic producer (events, labels, duplicates, malformed, drift) against
    the broker and schema registry of STREAMML_KAFKA_* (the compose 'producer' profile)."""
    import signal

    from services.demo.plan import DemoPlan
    from services.demo.producer import SyntheticProducer
    from streamml.codec import AvroCodec
    from streamml.settings import KafkaSettings, load_settings

    kafka = load_settings(KafkaSettings)
    plan = DemoPlan(
        duration_s=duration,
        rate=rate,
        entities=entities,
        drift_fraction=drift_at,
        seed=seed,
        malformed_share=malformed,
        topic_prefix=kafka.topic_prefix,
    )
    problem = plan.check()
    if problem:
        raise typer.BadParameter(problem)
    producer = SyntheticProducer(plan, kafka.client_config(), AvroCodec.from_settings(kafka))
    signal.signal(signal.SIGTERM, lambda *_: producer.stop())
    producer.start()
    try:
        while producer.is_alive():
            producer.join(10)
            s = producer.stats
            typer.echo(
                f"sent {s.valid_sent} events (+{s.duplicates_sent} duplicates, "
                f"{s.malformed_sent} malformed), {s.labels_sent} labels, drift "
                f"{'on' if s.drift_wall_s is not None else 'not yet'}"
            )
    except KeyboardInterrupt:
        producer.stop()
        producer.join(35)
    if producer.stats.delivery_errors:
        typer.echo(f"error: {producer.stats.delivery_errors} records not delivered", err=True)
        raise typer.Exit(1)
