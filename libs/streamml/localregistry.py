"""A real Confluent-compatible schema registry for development and tests: Apicurio Registry.

Apicurio Registry is published on Maven Central as a Quarkus application
(``io.apicurio:apicurio-registry-app:<version>:tar.gz:all``); Maven fetches it once into
``~/.cache/streamml/apicurio/<version>`` and it runs on the Java 17 that runs Kafka, with
in-memory storage (H2), on 127.0.0.1. Its Confluent Schema Registry API is served under
``/apis/ccompat/v7``, which is the URL clients get (:attr:`LocalRegistry.url`). With
``tls_dir`` set it serves HTTPS only, with a certificate from the local CA in that
directory (:mod:`streamml.tls`). See docs/decisions/schema-registry-apicurio.md.

>>> registry = LocalRegistry(run_dir=Path("/tmp/demo-registry"), port=0)  # doctest: +SKIP
>>> registry.start(); print(registry.url); registry.stop()                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from streamml.broker import alive_pid, cache_lock, free_port, require_tool, stop_pid
from streamml.errors import BrokerError
from streamml.tls import LocalCA

log = logging.getLogger(__name__)

# 3.0.x is the last line that runs on Java 17 (3.1+ is compiled for Java 21).
APICURIO_VERSION = "3.0.9"
_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
_COMPLETE_MARKER = ".complete"
CCOMPAT_PATH = "/apis/ccompat/v7"


def registry_cache_dir() -> Path:
    """Where the registry application is cached (outside the repository)."""
    base = os.environ.get("STREAMML_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "streamml"
    )
    return Path(base) / "apicurio" / APICURIO_VERSION


def fetch_registry() -> Path:
    """Download and unpack Apicurio Registry once; return the runner jar."""
    home = registry_cache_dir()
    if (home / _COMPLETE_MARKER).exists():
        return _runner(home)
    with cache_lock(home):
        if (home / _COMPLETE_MARKER).exists():  # fetched while this process waited
            return _runner(home)
        return _fetch_registry(home)


def _fetch_registry(home: Path) -> Path:
    mvn = require_tool(
        "mvn", "install Maven 3 (Debian/Ubuntu: apt-get install maven) to fetch the registry"
    )
    home.mkdir(parents=True, exist_ok=True)
    cmd = [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={_ARTIFACT}",
           f"-DoutputDirectory={home}"]  # fmt: skip
    log.info("fetching Apicurio Registry %s with Maven into %s", APICURIO_VERSION, home)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=home)
    archive = home / f"apicurio-registry-app-{APICURIO_VERSION}-all.tar.gz"
    if result.returncode != 0 or not archive.exists():
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise BrokerError(
            "Maven could not fetch Apicurio Registry (is Maven Central reachable?): "
            + " | ".join(tail)
        )
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: refuse paths out of "app"
            tar.extractall(home / "app", filter="data")
        else:
            tar.extractall(home / "app")  # Maven Central's checksummed archive
    archive.unlink()
    jar = _runner(home)
    (home / _COMPLETE_MARKER).write_text(APICURIO_VERSION)
    return jar


def _runner(home: Path) -> Path:
    jars = sorted((home / "app").glob("*-runner.jar")) or sorted(
        (home / "app").glob("quarkus-run.jar")
    )
    if not jars:
        raise BrokerError(f"no Apicurio runner jar in {home / 'app'}; delete {home} and retry")
    return jars[0]


@dataclass
class LocalRegistry:
    """One Apicurio Registry process; its log and pid live in ``run_dir``."""

    run_dir: Path
    port: int = 8081
    heap: str = "384m"
    #: a directory for the local CA (made if missing): serve HTTPS only, with its certificate
    tls_dir: Path | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if self.port == 0:
            self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The Confluent-compatible API, as STREAMML_KAFKA_SCHEMA_REGISTRY_URL takes it."""
        scheme = "https" if self.tls_dir is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def ca_path(self) -> Path | None:
        """The CA that signed the HTTPS certificate (None over plain HTTP)."""
        return None if self.tls_dir is None else LocalCA(Path(self.tls_dir)).cert_path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "registry.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "registry.log"

    def running_pid(self) -> int | None:
        """The pid of a registry started from ``run_dir`` that is still alive."""
        return alive_pid(self.pid_file)

    def start(self, *, timeout_s: float = 120.0) -> None:
        """Fetch (first time), start, and wait until the ccompat API answers."""
        java = require_tool(
            "java", "install Java 17+ (Debian/Ubuntu: apt-get install openjdk-17-jre)"
        )
        jar = fetch_registry()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.running_pid() is not None:
            log.info("registry already running at %s", self.url)
            self.wait_ready(timeout_s)
            return
        env = {
            **os.environ,
            "QUARKUS_HTTP_HOST": "127.0.0.1",
            "QUARKUS_HTTP_PORT": str(self.port),
            "QUARKUS_LOG_CONSOLE_FORMAT": "%d{HH:mm:ss} %-5p [%c{2.}] %s%e%n",
        }
        if self.tls_dir is not None:
            server = LocalCA.create(Path(self.tls_dir)).issue("registry")
            # HTTPS on the one port; plain HTTP switched off.
            env.update(
                QUARKUS_HTTP_PORT=str(free_port()),
                QUARKUS_HTTP_SSL_PORT=str(self.port),
                QUARKUS_HTTP_SSL_CERTIFICATE_FILES=str(server.cert_path),
                QUARKUS_HTTP_SSL_CERTIFICATE_KEY_FILES=str(server.key_path),
                QUARKUS_HTTP_INSECURE_REQUESTS="disabled",
            )
        out = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child
        self._process = subprocess.Popen(
            [java, f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-jar", str(jar)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            cwd=jar.parent,
        )  # fmt: skip
        out.close()
        self.pid_file.write_text(str(self._process.pid))
        self.wait_ready(timeout_s)
        log.info("Apicurio Registry %s is up at %s", APICURIO_VERSION, self.url)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until ``GET <url>/subjects`` answers 200."""
        context = None
        if self.ca_path is not None:
            context = ssl.create_default_context(cafile=str(self.ca_path))
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerError(
                    f"the registry exited with code {self._process.returncode}; see {self.log_file}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/subjects", timeout=2, context=context):
                    return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise BrokerError(
            f"the registry at {self.url} did not answer within {timeout_s:.0f}s ({last}); "
            f"see {self.log_file}"
        )

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop the registry (SIGTERM, then SIGKILL after ``timeout_s``)."""
        pid = self.running_pid()
        if pid is None:
            return
        stop_pid(pid, self._process, timeout_s=timeout_s, what="schema registry")
        self.pid_file.unlink(missing_ok=True)
        self._process = None
