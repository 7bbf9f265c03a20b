"""Run docker-compose.yml's definitions under podman, one container at a time.

podman-compose renders the file (interpolation, anchors, profiles) and this module starts
each service of the rendered definition with ``podman run``: the same image, command,
environment (``env_file`` + ``environment``), volumes, health check and stop grace
period. It does not hand ``up`` to podman-compose because ``depends_on`` conditions need
podman's health checks to run on their own, which they do through systemd timers, and
there is no systemd in these sandboxes: here the waits are explicit
(``podman healthcheck run`` polled, one-shot jobs waited for their exit code).

Everything it creates is named ``<prefix><name>`` and labelled ``streamml.ci=<prefix>``,
and ``down()`` removes exactly those (never a prune).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The sandbox's hybrid cgroups refuse crun, and podman's default open-files limit is above
# the sandbox's hard limit: every podman call of the tests reads this configuration.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""


def podman_env(conf_dir: Path) -> dict[str, str]:
    """The environment of every podman call: runc and lower limits (see CONTAINERS_CONF)."""
    conf = conf_dir / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman_compose() -> list[str]:
    """The podman-compose command (the venv's, installed with the dev extra)."""
    beside = Path(sys.executable).parent / "podman-compose"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("podman-compose")
    if found is None:
        raise RuntimeError("podman-compose not found: pip install -e '.[dev]'")
    return [found]


def render(
    variables: Mapping[str, str], env: Mapping[str, str], profiles: Iterable[str] = ()
) -> dict[str, Any]:
    """docker-compose.yml as podman-compose resolves it with these variables."""
    chosen = [arg for profile in profiles for arg in ("--profile", profile)]
    result = subprocess.run(
        [*podman_compose(), "-f", str(COMPOSE_FILE), *chosen, "config"],
        env={**env, **variables},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"podman-compose config failed: {result.stderr.strip()[-800:]}")
    rendered: dict[str, Any] = yaml.safe_load(result.stdout)
    return rendered


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file as compose reads them (comments and blanks skipped)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def container_env(service: Mapping[str, Any]) -> dict[str, str]:
    """What a container of this service gets: its env files, then its ``environment``."""
    env: dict[str, str] = {}
    files = service.get("env_file") or []
    for name in [files] if isinstance(files, str) else files:
        path = Path(name if isinstance(name, str) else name["path"])
        env.update(read_env_file(path if path.is_absolute() else ROOT / path))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({key: "" if value is None else str(value) for key, value in environment.items()})
    return env


def _shell_form(test: str | list[str]) -> str:
    """A compose health-check test as one shell command (podman 4.3's --health-cmd does not
    take the JSON form reliably)."""
    if isinstance(test, str):
        return test
    kind, *rest = test
    if kind == "CMD-SHELL":
        return str(rest[0])
    if kind == "CMD":
        return shlex.join(rest)
    raise ValueError(f"unsupported health-check test {test!r}")


def _seconds(text: str | int | None, default: float) -> float:
    if text is None:
        return default
    text = str(text)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


@dataclass
class PodmanStack:
    """The rendered compose services run as podman containers on one private network."""

    compose: dict[str, Any]
    prefix: str
    env: dict[str, str]
    published: dict[str, list[str]] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)

    @property
    def network(self) -> str:
        return f"{self.prefix}net"

    def name(self, service: str) -> str:
        return f"{self.prefix}{service}"

    def podman(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True,
            check=False, timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])}: {result.stderr.strip()[-800:]}")
        return result.stdout

    def run_args(self, service: str) -> list[str]:
        """``podman run`` arguments equivalent to the compose definition of ``service``."""
        spec = self.compose["services"][service]
        args = ["run", "-d", "--name", self.name(service), "--network", self.network,
                "--network-alias", service, "--hostname", spec.get("hostname", service),
                "--label", f"streamml.ci={self.prefix}"]  # fmt: skip
        for key, value in container_env(spec).items():
            args += ["--env", f"{key}={value}"]
        for volume in spec.get("volumes") or []:
            source, _, rest = str(volume).partition(":")
            if source.startswith((".", "/")):
                source = str((ROOT / source).resolve())
            else:
                source = self.name(source)  # a named volume of this stack
            args += ["--volume", f"{source}:{rest}"]
        for port in self.published.get(service, []):
            args += ["--publish", port]
        check = spec.get("healthcheck")
        if check and check.get("disable"):
            args.append("--no-healthcheck")
        elif check:
            args += ["--health-cmd", _shell_form(check["test"]),
                     "--health-interval", "disable",
                     "--health-timeout", str(check.get("timeout", "30s")),
                     "--health-retries", str(check.get("retries", 3))]  # fmt: skip
        restart = spec.get("restart")
        if restart:  # e.g. a service that gives up on a broker error is started again
            args += ["--restart", str(restart)]
        grace = _seconds(spec.get("stop_grace_period"), 10)
        args += ["--stop-timeout", str(int(grace))]
        args.append(spec["image"])
        command = spec.get("command")
        if command:
            args += [command] if isinstance(command, str) else [str(part) for part in command]
        return args

    def up(self, service: str, *, command: Iterable[str] | None = None) -> None:
        """Start one service's container (optionally with another command)."""
        args = self.run_args(service)
        if command is not None:
            image_at = args.index(self.compose["services"][service]["image"])
            args = [*args[: image_at + 1], *command]
        self.started.append(self.name(service))
        self.podman(*args)

    def create_network_and_volumes(self) -> None:
        self.podman("network", "create", "--label", f"streamml.ci={self.prefix}", self.network)
        for volume in self.compose.get("volumes") or {}:
            self.podman("volume", "create", "--label", f"streamml.ci={self.prefix}",
                        self.name(volume))  # fmt: skip

    def healthy(self, service: str) -> bool:
        """One run of the container's own health check: True when it passes."""
        result = subprocess.run(
            ["podman", "healthcheck", "run", self.name(service)],
            env=self.env, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        return result.returncode == 0

    def state(self, service: str) -> dict[str, Any]:
        out = self.podman("inspect", "--format", "{{json .State}}", self.name(service))
        state: dict[str, Any] = json.loads(out)
        return state

    def wait_healthy(self, service: str, timeout_s: float) -> None:
        """Poll the container's health check until it passes (a container with a restart
        policy may exit and be started again meanwhile)."""
        restarts = bool(self.compose["services"][service].get("restart"))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.state(service).get("Running"):
                if not restarts:
                    raise AssertionError(f"{service} exited: {self.logs(service)}")
            elif self.healthy(service):
                return
            time.sleep(2)
        raise AssertionError(f"{service} not healthy in {timeout_s:.0f}s: {self.logs(service)}")

    def wait_exit(self, service: str, timeout_s: float) -> int:
        """Wait for a one-shot container to finish; its exit code."""
        out = self.podman("wait", self.name(service), timeout=timeout_s)
        return int(out.strip().splitlines()[-1])

    def stop(self, service: str, timeout_s: float) -> int:
        """``podman stop`` (SIGTERM, SIGKILL after the grace period); the exit code."""
        self.podman("stop", "--time", str(int(timeout_s)), self.name(service),
                    timeout=timeout_s + 60)  # fmt: skip
        return int(self.state(service)["ExitCode"])

    def logs(self, service: str, tail: int = 30) -> str:
        result = subprocess.run(
            ["podman", "logs", "--tail", str(tail), self.name(service)],
            env=self.env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        return (result.stdout + result.stderr)[-4000:]

    def down(self) -> None:
        """Remove the containers, volumes and network this stack created, and nothing else."""
        for name in reversed(self.started):
            self.podman("rm", "--force", "--time", "5", name, check=False)
        for volume in self.compose.get("volumes") or {}:
            self.podman("volume", "rm", "--force", self.name(volume), check=False)
        with contextlib.suppress(RuntimeError):
            self.podman("network", "rm", "--force", self.network, check=False)
