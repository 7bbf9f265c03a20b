"""The project's command line: ``streamml <command>``.

- ``streamml kafka up|down|status``: the local single-node broker.
- ``streamml run <service>``: run a service in the foreground (same as
  ``python -m services.<service>``).
- ``streamml topics|replay|dlq|offsets|tail``: operator tools.
- ``streamml features|scorer ...``: each service's own operator commands.
- ``streamml demo``: the end-to-end demo.

Errors are one line (``error: ...``) with exit code 2 for bad arguments or settings.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import typer

from streamml.errors import BrokerError, ConfigError, StreamMLError

app = typer.Typer(
    name="streamml",
    help="Streaming ML inference and monitoring on Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
kafka_app = typer.Typer(
    help="The local Kafka broker (fetched from Maven Central).", no_args_is_help=True
)
app.add_typer(kafka_app, name="kafka")

SERVICES = ("features", "scorer", "drift", "performance")
EXIT_USAGE = 2


def _broker(port: int | None, run_dir: Path | None) -> object:
    from streamml.broker import LocalBroker

    chosen_port = port if port is not None else int(os.environ.get("KAFKA_PORT", "9092"))
    directory = run_dir or Path(os.environ.get("STREAMML_KAFKA_DIR", ".kafka"))
    return LocalBroker(run_dir=directory, port=chosen_port)


@kafka_app.command("up")
def kafka_up(
    port: int = typer.Option(None, help="Listener port (default: $KAFKA_PORT or 9092)."),
    run_dir: Path = typer.Option(
        None, "--dir", help="Data, logs and pid (default: $STREAMML_KAFKA_DIR or .kafka)."
    ),
) -> None:
    """Fetch Kafka (first time only) and start the local broker; prints its bootstrap."""
    from streamml.broker import LocalBroker

    broker = _broker(port, run_dir)
    assert isinstance(broker, LocalBroker)
    broker.start()
    typer.echo(f"Kafka is up: bootstrap {broker.bootstrap} (log: {broker.log_file})")


@kafka_app.command("down")
def kafka_down(
    run_dir: Path = typer.Option(None, "--dir", help="Directory the broker was started with."),
    wipe: bool = typer.Option(False, help="Also delete the broker's data."),
) -> None:
    """Stop the local broker cleanly."""
    from streamml.broker import LocalBroker

    broker = _broker(0, run_dir)
    assert isinstance(broker, LocalBroker)
    was_running = broker.running_pid() is not None
    broker.stop()
    if wipe:
        broker.wipe()
    typer.echo("Kafka stopped" if was_running else "Kafka was not running")


@kafka_app.command("status")
def kafka_status(
    run_dir: Path = typer.Option(None, "--dir", help="Directory the broker was started with."),
) -> None:
    """Say whether the local broker runs."""
    from streamml.broker import LocalBroker

    broker = _broker(0, run_dir)
    assert isinstance(broker, LocalBroker)
    pid = broker.running_pid()
    typer.echo(f"Kafka runs (pid {pid})" if pid else "Kafka is not running")
    if pid is None:
        raise typer.Exit(1)


@app.command("run")
def run_service(
    service: str = typer.Argument(..., help=f"One of: {', '.join(SERVICES)}."),
) -> None:
    """Run one service in the foreground (settings from its STREAMML_<SERVICE>_* env)."""
    if service not in SERVICES:
        raise typer.BadParameter(
            f"unknown service {service!r}; choose one of {', '.join(SERVICES)}"
        )
    module = importlib.import_module(f"services.{service}.__main__")
    module.main()


@app.command("asyncapi")
def asyncapi_command(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write the document here instead of printing it."
    ),
    check: Path | None = typer.Option(
        None, "--check", help="Exit 1 when this file is not the current document."
    ),
) -> None:
    """The AsyncAPI 3.0 document of every topic (from topics.yaml and schemas/)."""
    from streamml.asyncapi import build_document, render

    text = render(build_document())
    if check is not None:
        current = check.read_text(encoding="utf-8") if check.exists() else ""
        if current != text:
            typer.echo(f"error: {check} is stale: run streamml asyncapi -o {check}", err=True)
            raise typer.Exit(1)
        return
    if output is not None:
        output.write_text(text, encoding="utf-8")
        return
    sys.stdout.write(text)


def _mount_optional(name: str, module: str, help_text: str) -> None:
    """Mount a service's operator sub-commands when the service provides them."""
    try:
        sub = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return
        raise
    app.add_typer(sub.app, name=name, help=help_text)


def _build() -> typer.Typer:
    from streamml.ops.cli import register

    register(app)
    _mount_optional("features", "services.features.cli", "Features service operator commands.")
    _mount_optional("scorer", "services.scorer.cli", "Models: keygen, train, verify, promote.")
    _mount_optional("drift", "services.drift.cli", "Drift service operator commands.")
    _mount_optional("performance", "services.performance.cli", "Performance service commands.")
    _mount_optional("demo", "streamml.demo.cli", "The end-to-end demo.")
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``streamml`` console script."""
    from streamml.logs import configure_logging
    from streamml.ops.cli import run_one_line

    configure_logging(os.environ.get("STREAMML_LOG_LEVEL", "WARNING"))
    logging.getLogger("streamml.broker").setLevel(logging.INFO)
    try:
        code = run_one_line(_build(), argv)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = EXIT_USAGE
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 1
    except StreamMLError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
