"""Helpers for tests and benchmarks against the real broker: topics, produce, consume,
service processes.

For a source checkout (``ServiceProcess`` runs ``python -m services.<name>`` from the
repository root); tests/kafkatest.py re-exports them for the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from streamml.broker import free_port
from streamml.partitioner import PARTITIONER
from streamml.topics import load_topic_specs, provision

__all__ = [
    "ServiceProcess",
    "consume_all",
    "create_topics",
    "free_port",
    "metric_total",
    "produce",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]  # libs/streamml/testkit.py -> the checkout


def create_topics(
    bootstrap: str, prefix: str, *, partitions: int | None = None, names: Iterable[str] = ()
) -> list[str]:
    """Create every topic of topics.yaml with ``prefix`` (plus ``names``); return them."""
    specs = load_topic_specs(prefix, partitions=partitions)
    extra = [n for n in names if n not in {s.name for s in specs}]
    from streamml.topics import TopicSpec

    specs += [TopicSpec(n, partitions or 1) for n in extra]
    provision({"bootstrap.servers": bootstrap}, specs)
    return [s.name for s in specs]


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | str | None, bytes | None, list[tuple[str, bytes]]]],
    *,
    partition: int | None = None,
) -> int:
    """Produce (key, value, headers) records idempotently; wait until all are acknowledged."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": PARTITIONER,
        }
    )
    failures: list[str] = []

    def report(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    count = 0
    for key, value, headers in records:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": report}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        count += 1
    remaining = producer.flush(60)
    if remaining or failures:
        raise AssertionError(f"produce to {topic}: {remaining} unsent, errors {failures[:3]}")
    return count


def consume_all(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    timeout_s: float = 60.0,
    idle_s: float = 3.0,
    read_committed: bool = True,
) -> list[Message]:
    """Read a topic from the beginning.

    With ``expect``, stop as soon as that many records are read (or at ``timeout_s``);
    without, stop after ``idle_s`` with no new record (or at ``timeout_s``).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{os.getpid()}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = metadata.topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expect is not None and len(out) >= expect:
                # Read a little longer to catch records beyond what is expected.
                for msg in consumer.consume(1000, timeout=1.0):
                    if msg.error() is None:
                        out.append(msg)
                break
            batch = consumer.consume(1000, timeout=0.5)
            got = [m for m in batch if m.error() is None]
            if got:
                out.extend(got)
                last_new = time.monotonic()
            elif expect is None and time.monotonic() - last_new > idle_s:
                break
    finally:
        consumer.close()
    return out


class ServiceProcess:
    """A service (or any streamml program) running as a child process."""

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        *,
        http_port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.args = args
        self.env = {**os.environ, **env}
        self.http_port = http_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> ServiceProcess:
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, *self.args],
            env=self.env,
            cwd=ROOT,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def http(self, path: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
        assert self.http_port is not None, "give the process an http_port"
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                body = response.read()
                code = response.status
        except urllib.error.HTTPError as exc:
            body, code = exc.read(), exc.code
        try:
            return code, json.loads(body)
        except ValueError:
            return code, {"text": body.decode(errors="replace")}

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(
                    f"{self.args} exited with {self.proc and self.proc.returncode}"
                )
            try:
                code, _ = self.http("/readyz")
                if code == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.args} not ready within {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL: no chance to finish the batch or commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.alive:
            self.terminate()
        if self._log is not None:
            self._log.close()
            self._log = None


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout_s: float, what: str, *, interval_s: float = 0.2
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    A test waits for a condition, never for a fixed time: ``timeout_s`` is generous (it
    only bounds a failure), ``what`` names the condition in the failure message. An
    ``OSError`` (a service not listening yet) counts as "not yet".
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting until {what}")
        time.sleep(interval_s)


def metric_total(proc: ServiceProcess, name: str) -> float:
    """The sum of every sample of metric ``name`` that ``proc`` serves on /metrics."""
    _, body = proc.http("/metrics")
    total = 0.0
    for line in body.get("text", "").splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total
