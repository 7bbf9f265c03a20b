"""A real single-node Apache Kafka broker (KRaft) for development, tests and the demo.

The jars come from Maven Central through Maven (``resources/kafka-pom.xml``) and are
cached under ``~/.cache/streamml/kafka/<version>/libs``; a warm cache needs no network.
The broker runs as combined broker+controller on 127.0.0.1 with the settings that
transactions need on one node, logs to ``<run dir>/server.log``, and is up when it
answers a metadata request.

With ``sasl_ssl_port`` set it also listens for SASL_SSL (SCRAM-SHA-512) on that port: the
script makes a private CA and a broker certificate under ``<run dir>/tls`` and creates the
SCRAM users when it formats the storage (``kafka-storage format --add-scram``), so the
users exist before the broker first starts. Clients trust ``<run dir>/tls/ca.pem``.

>>> broker = LocalBroker(run_dir=Path("/tmp/demo-kafka"), port=0)  # doctest: +SKIP
>>> broker.start(); print(broker.bootstrap); broker.stop()          # doctest: +SKIP
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from streamml.errors import BrokerError
from streamml.tls import LocalCA

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
_COMPLETE_MARKER = ".complete"


def cache_dir() -> Path:
    """Where the Kafka jars are cached (outside the repository)."""
    base = os.environ.get("STREAMML_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "streamml"
    )
    return Path(base) / "kafka" / KAFKA_VERSION


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now: all
    held bound until every one is chosen (one at a time, the kernel may hand out a port it
    just released again, and two services given it fail to start)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def require_tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"{name} not found on PATH: {install_hint}")
    return path


def alive_pid(pid_file: Path) -> int | None:
    """The pid written in ``pid_file`` if that process is still alive."""
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def stop_pid(
    pid: int, process: subprocess.Popen[bytes] | None, *, timeout_s: float, what: str
) -> None:
    """SIGTERM ``pid``, wait up to ``timeout_s`` for it to end, then SIGKILL it.

    ``process`` is its handle when this process started it (so it is reaped, not left a
    zombie that ``kill(pid, 0)`` still finds)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.2)
    log.warning("%s did not stop in %.0fs; killing it", what, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.wait()


@contextlib.contextmanager
def cache_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on a cache ``directory`` (a ``.<name>.lock`` file beside it)
    while it is filled: processes that fetch at once (test workers on a cold cache) take
    turns, and the later ones find the first one's complete marker."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with (directory.parent / f".{directory.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch_kafka_jars(*, quiet: bool = True) -> Path:
    """Download Kafka and its runtime dependencies once; return the directory of jars."""
    libs = cache_dir() / "libs"
    if (libs / _COMPLETE_MARKER).exists():
        return libs
    with cache_lock(libs):
        if (libs / _COMPLETE_MARKER).exists():  # fetched while this process waited
            return libs
        return _fetch_kafka_jars(libs, quiet=quiet)


def _fetch_kafka_jars(libs: Path, *, quiet: bool) -> Path:
    mvn = require_tool(
        "mvn", "install Maven 3 (Debian/Ubuntu: apt-get install maven) to fetch Kafka"
    )
    require_tool("java", "install Java 17+ (Debian/Ubuntu: apt-get install openjdk-17-jre)")
    libs.mkdir(parents=True, exist_ok=True)
    pom = resources.files("streamml") / "resources" / "kafka-pom.xml"
    with resources.as_file(pom) as pom_path:
        cmd = [
            mvn,
            "-B",
            *(["-q"] if quiet else []),
            "-f",
            str(pom_path),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ]
        log.info("fetching Kafka %s with Maven into %s", KAFKA_VERSION, libs)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise BrokerError(
            "Maven could not fetch Kafka (is Maven Central reachable?): " + " | ".join(tail)
        )
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Maven finished but no kafka_2.13 jar is in {libs}")
    (libs / _COMPLETE_MARKER).write_text(KAFKA_VERSION)
    return libs


_LOG4J = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
"""


@dataclass
class LocalBroker:
    """One Kafka broker process; its data, logs and pid live in ``run_dir``."""

    run_dir: Path
    port: int = 9092
    heap: str = "768m"
    #: port of an extra SASL_SSL listener (SCRAM-SHA-512); None = PLAINTEXT only, 0 = free
    sasl_ssl_port: int | None = None
    #: SCRAM-SHA-512 users (name -> password) created when the storage is formatted
    scram_users: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if self.port == 0:
            self.port = free_port()
        if self.sasl_ssl_port == 0:
            self.sasl_ssl_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str | None:
        """host:port of the SASL_SSL listener, if it has one."""
        return None if self.sasl_ssl_port is None else f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def ca_path(self) -> Path:
        """The CA that signed the SASL_SSL listener's certificate."""
        return LocalCA(self.run_dir / "tls").cert_path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "server.log"

    @property
    def gc_log(self) -> Path:
        return self.run_dir / "gc.log"

    def _write_config(self, controller_port: int) -> Path:
        data = self.run_dir / "data"
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        secure: dict[str, str] = {}
        if self.sasl_ssl_port is not None:
            listeners.append(f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port}")
            protocols.append("SASL_SSL:SASL_SSL")
            server = LocalCA.create(self.run_dir / "tls").issue("broker")
            secure = {
                "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                ),
                # Kafka reads PEM directly (KIP-651): certificate chain + PKCS#8 key.
                "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
                "listener.name.sasl_ssl.ssl.keystore.location": str(server.keystore_path),
            }
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(protocols),
            **secure,
            "log.dirs": str(data),
            # One node: every internal topic has one replica, or transactions never start.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            # Aborted transactions of killed test processes time out quickly.
            "transaction.max.timeout.ms": "900000",
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "5000",
        }
        path = self.run_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.run_dir / "log4j.properties").write_text(_LOG4J.format(log_file=self.log_file))
        return path

    def _controller_port(self) -> int:
        saved = self.run_dir / "controller.port"
        if saved.exists():
            return int(saved.read_text())
        port = free_port()
        saved.write_text(str(port))
        return port

    def running_pid(self) -> int | None:
        """The pid of a broker started from ``run_dir`` that is still alive."""
        return alive_pid(self.pid_file)

    def start(self, *, timeout_s: float = 90.0) -> None:
        """Fetch (if needed), format (first time) and start the broker; wait until it answers."""
        java = require_tool(
            "java", "install Java 17+ (Debian/Ubuntu: apt-get install openjdk-17-jre)"
        )
        libs = fetch_kafka_jars()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.running_pid() is not None:
            log.info("broker already running at %s", self.bootstrap)
            self.wait_ready(timeout_s)
            return
        for port in (self.port, self.sasl_ssl_port):
            if port is not None and _port_open(port):
                raise BrokerError(
                    f"port {port} is taken by another process; choose another with "
                    "KAFKA_PORT=<port> (or stop what listens there)"
                )
        config = self._write_config(self._controller_port())
        classpath = f"{libs}/*"
        data = self.run_dir / "data"
        if not (data / "meta.properties").exists():
            format_storage(
                java, classpath, config, _kafka_cluster_id(), scram_users=self.scram_users or {}
            )
        stdout = open(self.run_dir / "stdout.log", "ab")  # noqa: SIM115 - owned by the child
        self._process = subprocess.Popen(
            [java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC",
             # Kafka's own start script's GC settings (kafka-run-class.sh). G1's default
             # pause goal, 200 ms, let young pauses reach 100-240 ms under load
             # (docs/soak.md, session 12): each one stalls every client at once.
             "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
             "-XX:+ExplicitGCInvokesConcurrent",
             # Every GC pause, with wall-clock time.
             f"-Xlog:gc:file={self.gc_log}:time,uptime:filecount=2,filesize=20m",
             f"-Dlog4j.configuration=file:{self.run_dir / 'log4j.properties'}",
             "-cp", classpath, "kafka.Kafka", str(config)],
            stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        stdout.close()
        self.pid_file.write_text(str(self._process.pid))
        self.wait_ready(timeout_s)
        log.info("Kafka %s is up at %s (log: %s)", KAFKA_VERSION, self.bootstrap, self.log_file)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the broker answers a metadata request."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {self._process.returncode}; "
                    f"see {self.log_file} and {self.run_dir / 'stdout.log'}"
                )
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return
            except Exception as exc:  # KafkaException while it starts
                last_error = str(exc)
            time.sleep(0.3)
        raise BrokerError(
            f"the broker at {self.bootstrap} did not answer within {timeout_s:.0f}s "
            f"({last_error}); see {self.log_file}"
        )

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after ``timeout_s``)."""
        pid = self.running_pid()
        if pid is None:
            return
        stop_pid(pid, self._process, timeout_s=timeout_s, what="broker")
        self.pid_file.unlink(missing_ok=True)
        self._process = None

    def wipe(self) -> None:
        """Delete the broker's data (it must be stopped)."""
        if self.running_pid() is not None:
            raise BrokerError("stop the broker before wiping its data")
        shutil.rmtree(self.run_dir, ignore_errors=True)


def format_storage(
    java: str,
    classpath: str,
    config: Path,
    cluster_id: str,
    *,
    scram_users: dict[str, str] | None = None,
) -> None:
    """``kafka-storage format`` the log directories of ``config`` as cluster ``cluster_id``.

    The id goes in as ``--cluster-id=<id>``: one random id in 64 starts with ``-``, and
    given as a separate argument the tool's parser reads it as an unknown option.
    """
    cmd = [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
           f"--cluster-id={cluster_id}", "--config", str(config)]  # fmt: skip
    for name, password in sorted((scram_users or {}).items()):
        cmd.append(f"--add-scram=SCRAM-SHA-512=[name={name},password={password}]")
    fmt = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if fmt.returncode != 0:
        output = (fmt.stderr.strip() or fmt.stdout.strip())[-500:]
        for password in (scram_users or {}).values():
            output = output.replace(password, "***")
        raise BrokerError("formatting KRaft storage failed: " + output)


def _kafka_cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
