"""Prometheus metrics of the runtime, and the HTTP server for /metrics, /healthz, /readyz.

Every service process serves, on one port: ``GET /metrics`` (Prometheus text format),
``GET /healthz`` (200 while the loop is alive - restoring state counts - and 503 once it
gave up or made no progress for the idle limit), ``GET /readyz`` (200 once state is
restored and the processor is ready; 503 while restoring, retrying an infrastructure
fault or halted, with the reason in the body's ``reason``), and ``POST /resume``
(operator command that lifts a fail-stop halt).
Labels are low-cardinality: service, topic, partition, reason, outcome.

**One metrics pattern for every service core.** A core (a service's ``processor.py``) never
touches a module-level Prometheus collector. Its service's ``metrics.py`` defines one class
(``FeaturesMetrics``, ``ScorerMetrics``, ``DriftMetrics``, ...) whose ``__init__(registry=
REGISTRY)`` creates every collector of the core on that registry, as attributes named for
what they count (``duplicates``, ``predictions``), plus ``default_metrics =
process_default(<Service>Metrics)``, the one instance on the default registry, created once
per process. The core's constructor takes ``metrics: <Service>Metrics | None = None`` and
keeps ``metrics or default_metrics()``: the service wiring injects it (or lets it default),
a test passes ``<Service>Metrics(CollectorRegistry())`` and reads that registry. The
exported names, help texts and labels are the contract (dashboards and alerts read them):
moving a collector into the class never renames it. The runtime's own metrics are
:class:`RuntimeMetrics` below.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, TypeVar

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)


_M = TypeVar("_M")


def process_default(factory: Callable[[], _M]) -> Callable[[], _M]:
    """A function returning the one ``factory()`` of this process, made on the first call.

    A service's metrics class registers its collectors on the default registry, which takes
    each name once: ``default_metrics = process_default(FeaturesMetrics)``.
    """
    lock = threading.Lock()
    made: list[_M] = []

    def default() -> _M:
        with lock:
            if not made:
                made.append(factory())
            return made[0]

    return default


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RuntimeMetrics:
    """The runtime's metrics (label ``service``), registered once per registry.

    Several runtimes in one process (benchmarks, tests) share the collectors.
    """

    _shared: ClassVar[dict[int, RuntimeMetrics]] = {}

    def __new__(cls, service: str, registry: CollectorRegistry = REGISTRY) -> RuntimeMetrics:
        existing = cls._shared.get(id(registry))
        if existing is not None:
            return existing
        instance = super().__new__(cls)
        instance._build(registry)
        cls._shared[id(registry)] = instance
        return instance

    def __init__(self, service: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.service = service

    def _build(self, registry: CollectorRegistry) -> None:
        self.records_in = Counter(
            "streamml_records_in_total",
            "Records consumed from input topics.",
            ["service", "topic"],
            registry=registry,
        )
        self.records_out = Counter(
            "streamml_records_out_total",
            "Records produced to output topics (committed or not).",
            ["service", "topic"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "streamml_dead_letters_total",
            "Records sent to a dead-letter topic, by reason (error class).",
            ["service", "topic", "reason"],
            registry=registry,
        )
        self.transactions = Counter(
            "streamml_transactions_total",
            "Kafka transactions by outcome (committed, aborted).",
            ["service", "outcome"],
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "streamml_transaction_commit_seconds",
            "Time to commit one transaction (offsets + commit).",
            ["service"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "streamml_batch_processing_seconds",
            "Time to decode, process and produce one micro-batch.",
            ["service"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.heap_trims = Counter(
            "streamml_heap_trims_total",
            "Times the C heap's freed pages were given back to the OS because the RSS grew "
            "(settings heap_trim_growth; the trim after a restore is not counted).",
            ["service"],
            registry=registry,
        )
        self.heap_bytes = Gauge(
            "streamml_heap_bytes",
            "The C heap (glibc's mallinfo2), read when the heap trimmer checks the RSS: "
            "in_use, free (kept by malloc, what a trim returns) and mmapped (large chunks).",
            ["service", "kind"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "streamml_batch_records",
            "Records per micro-batch.",
            ["service"],
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=registry,
        )
        self.lag = Gauge(
            "streamml_consumer_lag",
            "Records between the committed position and the end of the partition.",
            ["service", "topic", "partition"],
            registry=registry,
        )
        self.state_keys = Gauge(
            "streamml_state_store_keys",
            "Keys held in a state store on this instance.",
            ["service", "store"],
            registry=registry,
        )
        self.restore_seconds = Histogram(
            "streamml_state_restore_seconds",
            "Time to restore state stores on partition assignment.",
            ["service"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.retries = Counter(
            "streamml_retries_total",
            "Batches retried after an abortable or transient error, by reason.",
            ["service", "reason"],
            registry=registry,
        )
        self.rebalances = Counter(
            "streamml_rebalances_total",
            "Partition assignments and revocations.",
            ["service", "kind"],
            registry=registry,
        )
        self.backpressure = Counter(
            "streamml_producer_backpressure_total",
            "Times the local producer queue was full and consumption waited.",
            ["service"],
            registry=registry,
        )
        self.faults = Counter(
            "streamml_infrastructure_faults_total",
            "Infrastructure faults (registry, broker, state store) that aborted a batch, by "
            "cause; never dead letters.",
            ["service", "cause"],
            registry=registry,
        )
        self.replayed_dead_letters = Counter(
            "streamml_replayed_dead_letters_skipped_total",
            "Replayed records that failed again and were not dead-lettered a second time "
            "(their dead letter from the first pass is already in the dead-letter topic).",
            ["service", "topic"],
            registry=registry,
        )
        self.circuit_trips = Counter(
            "streamml_dead_letter_circuit_trips_total",
            "Times the dead-letter-rate circuit halted the service.",
            ["service"],
            registry=registry,
        )
        self.halted = Gauge(
            "streamml_halted",
            "1 while the service is halted by a fail-stop circuit, else 0.",
            ["service"],
            registry=registry,
        )
        self.ready = Gauge(
            "streamml_ready", "1 when the service is ready to process.", ["service"],
            registry=registry,
        )  # fmt: skip


class HealthServer:
    """A small HTTP server for metrics, health and the resume command."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        status: Callable[[], dict[str, Any]],
        on_resume: Callable[[], bool],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok = healthy()
                    self._json(200 if ok else 503, {"healthy": ok, **status()})
                elif self.path == "/readyz":
                    ok = ready()
                    self._json(200 if ok else 503, {"ready": ok, **status()})
                else:
                    self._json(404, {"error": f"no such path {self.path}"})

            def do_POST(self) -> None:
                if self.path == "/resume":
                    resumed = on_resume()
                    self._json(200 if resumed else 409, {"resumed": resumed, **status()})
                else:
                    self._json(404, {"error": f"no such path {self.path}"})

            def _json(self, code: int, body: dict[str, Any]) -> None:
                self._send(code, json.dumps(body).encode(), "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self.host, self.port = server._httpd.server_address[:2]

    def start(self) -> None:
        self._thread.start()
        log.info("metrics and health on http://%s:%s", self.host, self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class BulkHistogram(Collector):
    """A Prometheus histogram fed a batch of observations at a time.

    ``prometheus_client.Histogram.observe`` takes a lock and walks the buckets once per
    value (~1 us); a service that emits thousands of records per second observes a whole
    micro-batch with one NumPy pass instead. Exposed like a Histogram: ``_bucket{le}``
    (cumulative), ``_count`` and ``_sum``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        bounds = sorted(float(b) for b in buckets if b != math.inf)
        if not bounds:
            raise ValueError(f"histogram {name}: at least one finite bucket bound is needed")
        self._name = name
        self._documentation = documentation
        self._bounds = np.array(bounds, dtype=np.float64)
        self._labels = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many(np.array([value], dtype=np.float64))

    def observe_many(self, values: Any) -> None:
        """Count every value of ``values`` (a sequence or array of numbers)."""
        values = np.asarray(values, dtype=np.float64)
        if not values.size:
            return
        # The first bound >= value is the value's bucket (Prometheus buckets are "le").
        counts = np.bincount(
            np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts)
        )
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts = self._counts.copy()
            total = self._sum
        cumulative = np.cumsum(counts).tolist()
        yield HistogramMetricFamily(
            self._name,
            self._documentation,
            buckets=list(zip(self._labels, cumulative, strict=True)),
            sum_value=total,
        )

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation)
