"""How every service starts: settings -> logging -> build -> run -> exit code.

A service's ``__main__.py`` names its settings class and its build function::

    def main() -> int:
        return run_service("features", FeaturesSettings, build)

Start-up failures take one path: one line ``error: ...`` on stderr, with exit code 2 for a
configuration fault (:class:`~streamml.errors.ConfigError`: a bad setting, a missing file,
a reference or a model that does not verify) and 1 for any other project error (a broker
that cannot be read at start-up). SIGTERM and SIGINT are handled in one place,
:meth:`StreamRuntime.run <streamml.runtime.loop.StreamRuntime.run>`: the open batch
finishes, the consumer leaves its group, exit code 0.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import Protocol, TypeVar

from streamml.errors import ConfigError, StreamMLError
from streamml.logs import configure_logging
from streamml.settings import ServiceSettings, load_settings

EXIT_FAILED = 1
EXIT_USAGE = 2

S = TypeVar("S", bound=ServiceSettings)


class RunnableService(Protocol):
    """What a build function returns: something that runs until stopped."""

    def run(self) -> int:
        """Run until SIGTERM/SIGINT or a fault; the process exit code."""
        ...


def run_service(name: str, settings_cls: type[S], build: Callable[[S], RunnableService]) -> int:
    """Start the service ``name``; the exit code (``sys.exit(run_service(...))``)."""
    try:
        settings = load_settings(settings_cls)
    except ConfigError as exc:
        return refuse(exc)
    configure_logging(settings.log_level, settings.log_format, service=name)
    try:
        service = build(settings)
    except StreamMLError as exc:
        return refuse(exc)
    return service.run()


def refuse(exc: StreamMLError) -> int:
    """The one way to report a start-up failure: ``error: ...`` on stderr, the exit code."""
    sys.stderr.write(f"error: {' '.join(str(exc).split())}\n")
    sys.stderr.flush()
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED


def tune_gc(young_threshold: int) -> None:
    """Collect young objects every ``young_threshold`` allocations (0: leave the default).

    A record allocates dozens of short-lived objects (the decoded value, its containers,
    the outputs) and a batch keeps a thousand of them alive, so at CPython's default
    threshold of 700 the cycle collector runs every few records and walks them again.
    """
    if young_threshold > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)
