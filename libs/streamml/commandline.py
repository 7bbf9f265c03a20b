"""What every ``streamml`` command group shares: the typer app, settings, one error line.

A bad argument or setting prints one line ``error: ...`` on stderr and exits 2; a broker
or service that cannot be reached exits 1 (``fail(message, code=1)``).
"""

from __future__ import annotations

from typing import NoReturn, TypeVar

import typer
from pydantic_settings import BaseSettings

from streamml.errors import ConfigError
from streamml.settings import load_settings

EXIT_FAILED = 1
EXIT_USAGE = 2

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def exit_error(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` as one line on stderr; return the Exit to raise."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(code)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    raise exit_error(message, code)


def command_group(name: str, help_text: str) -> typer.Typer:
    """A service's command group, mounted as ``streamml <name> ...`` (see pyproject.toml)."""
    return typer.Typer(name=name, help=help_text, no_args_is_help=True, add_completion=False)


def settings_or_fail(cls: type[SettingsT]) -> SettingsT:
    """The settings from the environment, or one ``error:`` line and exit 2."""
    try:
        return load_settings(cls)
    except ConfigError as exc:
        fail(str(exc))
