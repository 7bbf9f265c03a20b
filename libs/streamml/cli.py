"""The project's command line: ``streamml <command>``.

- ``streamml kafka up|down|status``: the local single-node broker (``--sasl-ssl-port``
  adds a SASL_SSL listener with SCRAM-SHA-512).
- ``streamml registry up|down|status``: a local Confluent-compatible schema registry
  (Apicurio Registry from Maven Central; ``--tls`` serves HTTPS).
- ``streamml run <service>``: run a service in the foreground (same as
  ``python -m services.<service>``); services register under the ``streamml.services``
  entry points.
- ``streamml topics|replay|dlq|offsets|tail``: operator tools.
- ``streamml features|scorer|drift|performance ...``: each service's own operator
  commands, registered under the ``streamml.commands`` entry points (pyproject.toml).
- ``streamml demo``: the end-to-end demo.

Errors are one line (``error: ...``) with exit code 2 for bad arguments or settings.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
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
registry_app = typer.Typer(
    help="A local schema registry (Apicurio Registry, from Maven Central).", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")

#: Entry-point groups (pyproject.toml): ``streamml run <name>`` runs a service's ``main()``;
#: ``streamml <name> ...`` are a command group's (a typer app's) commands.
SERVICES_GROUP = "streamml.services"
COMMANDS_GROUP = "streamml.commands"
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
    sasl_ssl_port: int = typer.Option(
        None,
        help="Also listen for SASL_SSL (SCRAM-SHA-512) on this port, with a certificate from "
        "a CA made in <dir>/tls and the SCRAM user 'svc' (password in <dir>/svc.password). "
        "Users are created when the storage is first formatted.",
    ),
) -> None:
    """Fetch Kafka (first time only) and start the local broker; prints its bootstrap."""
    from streamml.broker import LocalBroker

    broker = _broker(port, run_dir)
    assert isinstance(broker, LocalBroker)
    if sasl_ssl_port is not None:
        broker.sasl_ssl_port = sasl_ssl_port
        broker.scram_users = {"svc": _scram_password(broker.run_dir / "svc.password")}
    broker.start()
    typer.echo(f"Kafka is up: bootstrap {broker.bootstrap} (log: {broker.log_file})")
    if broker.sasl_ssl_bootstrap is not None:
        typer.echo(
            f"SASL_SSL (SCRAM-SHA-512) on {broker.sasl_ssl_bootstrap}: user svc, password in "
            f"{broker.run_dir / 'svc.password'}, CA {broker.ca_path}"
        )


def _scram_password(path: Path) -> str:
    """The dev SCRAM user's password: made once, kept in a file only its owner reads."""
    import secrets

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(18))
    return path.read_text().strip()


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


def _registry(port: int | None, run_dir: Path | None, tls: bool) -> object:
    from streamml.localregistry import LocalRegistry

    chosen_port = port if port is not None else int(os.environ.get("REGISTRY_PORT", "8081"))
    directory = run_dir or Path(os.environ.get("STREAMML_REGISTRY_DIR", ".registry"))
    return LocalRegistry(
        run_dir=directory, port=chosen_port, tls_dir=directory / "tls" if tls else None
    )


@registry_app.command("up")
def registry_up(
    port: int = typer.Option(None, help="HTTP(S) port (default: $REGISTRY_PORT or 8081)."),
    run_dir: Path = typer.Option(
        None, "--dir", help="Log and pid (default: $STREAMML_REGISTRY_DIR or .registry)."
    ),
    tls: bool = typer.Option(False, help="Serve HTTPS only, with a CA made in <dir>/tls."),
) -> None:
    """Fetch Apicurio Registry (first time only), start it; prints the URL to use."""
    from streamml.localregistry import LocalRegistry

    registry = _registry(port, run_dir, tls)
    assert isinstance(registry, LocalRegistry)
    registry.start()
    typer.echo(f"schema registry is up: STREAMML_KAFKA_SCHEMA_REGISTRY_URL={registry.url}")
    if registry.ca_path is not None:
        typer.echo(f"STREAMML_KAFKA_SCHEMA_REGISTRY_SSL_CA_LOCATION={registry.ca_path}")


@registry_app.command("down")
def registry_down(
    run_dir: Path = typer.Option(None, "--dir", help="Directory it was started with."),
) -> None:
    """Stop the local schema registry (its in-memory schemas go with it)."""
    from streamml.localregistry import LocalRegistry

    registry = _registry(0, run_dir, False)
    assert isinstance(registry, LocalRegistry)
    was_running = registry.running_pid() is not None
    registry.stop()
    typer.echo("schema registry stopped" if was_running else "schema registry was not running")


@registry_app.command("status")
def registry_status(
    run_dir: Path = typer.Option(None, "--dir", help="Directory it was started with."),
) -> None:
    """Say whether the local schema registry runs."""
    from streamml.localregistry import LocalRegistry

    registry = _registry(0, run_dir, False)
    assert isinstance(registry, LocalRegistry)
    pid = registry.running_pid()
    typer.echo(f"schema registry runs (pid {pid})" if pid else "schema registry is not running")
    if pid is None:
        raise typer.Exit(1)


def _plugins(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name, in the order pyproject.toml declares them."""
    return {ep.name: ep for ep in entry_points(group=group)}


def _services() -> tuple[str, ...]:
    return tuple(_plugins(SERVICES_GROUP))


@app.command("run")
def run_service(
    service: str = typer.Argument(..., help=f"One of: {', '.join(_services())}."),
) -> None:
    """Run one service in the foreground (settings from its STREAMML_<SERVICE>_* env)."""
    services = _plugins(SERVICES_GROUP)
    if service not in services:
        raise typer.BadParameter(
            f"unknown service {service!r}; choose one of {', '.join(services)}"
        )
    main: Callable[[], int] = services[service].load()
    raise typer.Exit(main())


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


def _mount_commands(argv: Sequence[str] | None = None) -> None:
    """Mount every command group registered under ``streamml.commands`` (pyproject.toml);
    only the one ``argv`` names, when its first word is one (``streamml demo run ...``
    imports no other service: the drift commands alone import river and scikit-learn,
    seconds of every demo run's start on a busy machine).

    A service plugs its operator commands into ``streamml <service> ...`` this way, so the
    shared library never imports a service by name.
    """
    plugins = _plugins(COMMANDS_GROUP)
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in plugins:
        plugins = {words[0]: plugins[words[0]]}
    for name, plugin in plugins.items():
        try:
            sub = plugin.load()
        except ModuleNotFoundError as exc:  # registered, but not in this installation
            if exc.name is not None and plugin.module.startswith(exc.name):
                continue
            raise
        app.add_typer(sub, name=name)


def _build(argv: Sequence[str] | None = None) -> typer.Typer:
    from streamml.ops.cli import register

    register(app)
    _mount_commands(argv)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``streamml`` console script."""
    from streamml.logs import configure_logging
    from streamml.ops.cli import run_one_line

    configure_logging(os.environ.get("STREAMML_LOG_LEVEL", "WARNING"))
    logging.getLogger("streamml.broker").setLevel(logging.INFO)
    logging.getLogger("streamml.localregistry").setLevel(logging.INFO)
    try:
        code = run_one_line(_build(argv), argv)
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
