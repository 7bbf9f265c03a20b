"""Soak: the whole pipeline at a steady rate for an hour, with a rolling restart in the middle.

Starts its own broker (it restarts it mid-run) and the four services as processes
(``python -m services.<name>``, as the demo does), and feeds them with the demo's synthetic
producer (events, late labels, duplicates, malformed records) at ``--rate`` events/s for
``--minutes``. Event time is compressed so that the longest retention window fills at
``--fill-at`` of the run (default 20%) and then expires for the rest of it; the retention
settings are shortened for the run so that this needs no more than x200 or so at the
defaults:

* features: dedup ids remembered 1 day (``DEDUP_RETENTION_S``); entity histories keep the
  feature set's longest window (24 h) plus the lateness bound;
* performance: label horizon 1 day, late-label memory 12 h (a prediction is forgotten 1.5
  days after its event), reports every hour of event time; the producer's label delays are
  shortened as the horizon is (1/7 of the default 7 days: ``LABEL_DELAY_SCALE``), so the
  share of labels within the horizon is production's and the label stream is steady after
  the warm-up;
* the changelogs' ``segment.ms`` (and ``segment.jitter.ms``, half of it) and
  ``delete.retention.ms`` (wall-clock settings) are
  divided by the compression too, with floors (``--no-changelog-time`` keeps them), so a
  restore reads about as much, relative to the live keys, as it would in production.

Every ``--sample-s`` (10 s) it records, per service, RSS and CPU (from /proc), consumer
lag per group (each service is one group; the lag it reports on /metrics, its position
against the partitions' ends, as it would be alerted on; none while it is down), the
state-store keys each service reports there (dedup ids, entities, pending label joins,
...), the changelog topics' bytes on the broker's disk, end-to-end latency (the
producer's send to the prediction read by a ``read_committed`` consumer that decodes only
the event id: p50/p99 over the interval), the machine's load average, and where its CPU
went: the soak process's own CPU beside the services' and the broker's, and the kernel's
split of the machine's time (user, system, iowait, steal, idle) with the shares stalled
waiting for a CPU or for I/O (benchmarks/hostcpu.py).

Mid-run (at 40% of it) the broker is stopped (SIGTERM) and started again; then each service
in pipeline order (at 50/56/62/68%) gets SIGTERM and is started again, like a rolling
deploy. After the producer ends, the run waits for every valid event's prediction, then
reads every audited topic from the beginning and checks, with the demo's exactly-once
claims (the ones its integration test asserts), that no feature vector or prediction is
missing and none is written twice (the audit runs after the traffic, so that the
measuring process's work does not grow during it).

Last line: one JSON object: per service RSS growth per hour once the retention windows
are full (a least-squares slope over the samples after the later of "full" and the
service's restart plus a minute, as a share of the mean RSS there; the segment before the
restart too), the state sizes' and changelogs' growth likewise, peak lag and time back to
the steady level after each restart, per group and for the whole pipeline (events sent
but not yet predicted; steady: 1.5x its 90th percentile between the warm-up and the first
restart, at least one second of traffic), p99 latency in the first 10 minutes after a
5-minute warm-up, in the 10 minutes after the retention is full and in the last 10
minutes of traffic, records lost and duplicated, the dead letters by reason, the broker's
log-cleaner time (read from its log), the load average, and in each p99 window the mean
load, cores per process and the machine's split (``cpu``). The report (self-contained
HTML, inline SVG) plots RSS, lag, latency, state sizes, changelog bytes, load, the
cleaner and the CPU over time with the restarts marked. Samples go to ``samples.json`` beside it.

Usage: ``python -m benchmarks.soak [--minutes 60] [--rate 1000] [--out DIR] [--port PORT]``
(``make soak``). The run directory (broker data, models, logs, samples, report) defaults to
a temporary directory outside the repository and is kept.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gc
import json
import logging
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import brokerlog
from benchmarks.hostcpu import TICKS, HostCpu
from services.demo import claims, report
from services.demo.observer import TopicObserver, parse_metrics, read_from_beginning
from services.demo.orchestrator import ServiceChild
from services.demo.plan import (
    CLOCK_FEATURES,
    DLQ_TOPICS,
    SERVICES,
    DemoPlan,
    service_env,
)
from services.demo.producer import SyntheticProducer
from services.performance.settings import PerformanceSettings
from streamml.errors import DecodeError
from streamml.runtime.provisioning import CHANGELOG_SEGMENT_MS

log = logging.getLogger("soak")

DAY_S = 86_400
DEDUP_RETENTION_S = DAY_S
LABEL_HORIZON_S = DAY_S
LATE_LABEL_MEMORY_S = DAY_S // 2
ENTITY_HISTORY_S = DAY_S  # the demo feature set's longest window
LONGEST_RETENTION_S = max(
    DEDUP_RETENTION_S, LABEL_HORIZON_S + LATE_LABEL_MEMORY_S, ENTITY_HISTORY_S
)
# The labels' delays (streamml.synthetic: 60 % within minutes, 40 % chargebacks with a
# median of 2 days) shortened as the label horizon is (7 days by default, 1 day here): about
# as many labels arrive within the horizon as in production (98 %, not 68 %), and the label
# stream reaches its steady rate in the warm-up instead of growing all hour (session 13,
# unscaled: 663 labels/s in the first p99 window, 975 in the last).
PRODUCTION_LABEL_HORIZON_S = PerformanceSettings.model_fields[
    "label_horizon"
].default.total_seconds()
LABEL_DELAY_SCALE = LABEL_HORIZON_S / PRODUCTION_LABEL_HORIZON_S
# The changelogs' wall-clock settings (streamml.runtime's segment.ms, the broker's default
# delete.retention.ms), compressed like event time for the run (--changelog-time), so that
# a restore reads what it would in production relative to the live keys.
CHANGELOG_SEGMENT_S = CHANGELOG_SEGMENT_MS / 1000
TOMBSTONE_RETENTION_S = DAY_S
MIN_SEGMENT_S = 60  # no smaller: a segment a few seconds long makes the cleaner the load
MIN_TOMBSTONE_S = 300  # a restore must end before its tombstones may go (see docs/soak.md)
BROKER_RESTART_AT = 0.40
SERVICE_RESTART_AT = (0.50, 0.56, 0.62, 0.68)  # features, scorer, drift, performance


# -- what the producer sent when: a codec that notes the send time of every event ----------


class TimedCodec:
    """The producer's codec, noting when each event was encoded (just before it is
    produced) so that the prediction's arrival gives the end-to-end latency."""

    def __init__(self, codec: Any) -> None:
        self._codec = codec
        self.sent_at: dict[str, float] = {}

    def encode(self, schema: str, record: dict[str, Any], *, topic: str) -> bytes:
        data: bytes = self._codec.encode(schema, record, topic=topic)
        if schema == "Event":
            self.sent_at[str(record["event_id"])] = time.monotonic()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codec, name)


class LatencyProbe(threading.Thread):
    """Times each prediction against its event's send: a ``read_committed`` consumer of the
    predictions topic alone, decoding only the event id (a projection of ``Prediction``).

    Its work per second stays what the traffic makes it: the exactly-once audit, which
    decodes and remembers every record of every audited topic, runs after the traffic
    (:meth:`Soak.audit`). Run during it (session 13), the audit's reader and the growing
    label stream took this process from 0.22 to 0.31 cores on a machine with none idle."""

    def __init__(self, plan: DemoPlan, config: dict[str, Any], codec: Any, timed: TimedCodec):
        super().__init__(name="soak-latency-probe", daemon=True)
        self._topic = plan.topic("predictions")
        self._config = config
        self._group = f"{plan.topic_prefix}soak-probe-{os.getpid()}"
        self._codec = codec
        fields = [f["name"] for f in codec.definition("Prediction")["fields"]]
        self.schema = f"Prediction[{','.join('-' + f for f in fields if f != 'event_id')}]"
        self._timed = timed
        self.records = 0  # predictions read (duplicates too: the audit tells them apart)
        self.latency_at = array("d")  # monotonic time seen
        self.latency_s = array("d")
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            consumer = read_from_beginning(self._config, self._group, [self._topic])
        except Exception:  # the run goes on, without latency figures; the log says why
            log.exception("latency probe could not start")
            return
        try:
            sent_at, decode, schema = self._timed.sent_at, self._codec.decode, self.schema
            while not self._halt.is_set():
                for message in consumer.consume(num_messages=1000, timeout=0.5):
                    if message.error() is not None:
                        continue
                    self.records += 1
                    try:
                        event_id = decode(message.value(), schema, topic=self._topic)["event_id"]
                    except DecodeError:  # the audit counts it as undecodable
                        continue
                    sent = sent_at.pop(event_id, None)
                    if sent is not None:
                        now = time.monotonic()
                        self.latency_at.append(now)
                        self.latency_s.append(now - sent)
        except Exception:  # the run goes on; its latency figures end here, and the log says why
            log.exception("latency probe stopped")
        finally:
            consumer.close()


class GcPauses:
    """This process's garbage-collection pauses (the latency is timed here, so a pause
    delays every receipt in it): the longest and the total since the last :meth:`take`."""

    def __init__(self) -> None:
        self._started = 0.0
        self._longest = 0.0
        self._total = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            pause = time.perf_counter() - self._started
            self._longest = max(self._longest, pause)
            self._total += pause

    def take(self) -> tuple[float, float]:
        """(longest, total) seconds since the last call; then a fresh count."""
        figures = (self._longest, self._total)
        self._longest = self._total = 0.0
        return figures

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)


# -- per-process figures from /proc ------------------------------------------------------


def proc_rss_cpu(pid: int | None) -> tuple[float, float] | None:
    """(RSS bytes, CPU seconds used so far) of ``pid`` from /proc, or None when gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as statm:
            rss_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return rss_pages * os.sysconf("SC_PAGE_SIZE"), cpu


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a segment deleted while we walk
                total += os.path.getsize(os.path.join(root, name))
    return total


# -- the run -----------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the producer started
    load1: float
    rss: dict[str, float] = field(default_factory=dict)  # bytes, per service and broker
    cpu: dict[str, float] = field(default_factory=dict)  # share of one core over the interval
    # The whole machine over the interval (benchmarks/hostcpu.py): cores by kind (user,
    # system, iowait, steal, idle) and the shares stalled waiting for a CPU or for I/O.
    host: dict[str, float] = field(default_factory=dict)
    lag: dict[str, float] = field(default_factory=dict)  # per consumer group
    state: dict[str, float] = field(default_factory=dict)  # "service/store" -> keys
    heap: dict[str, float] = field(default_factory=dict)  # "service/kind" -> C heap bytes
    changelog_bytes: dict[str, float] = field(default_factory=dict)
    p50_s: float | None = None
    p99_s: float | None = None
    latencies: int = 0
    sent: int = 0
    predictions: int = 0
    gc_pause_max_s: float = 0.0  # the soak process's own longest GC pause in the interval
    gc_pause_total_s: float = 0.0
    wall: float = 0.0  # epoch seconds, to line the broker's log up with the samples
    cleaner_s: float = 0.0  # seconds the broker's log cleaner ran in the interval (at the end)


@dataclass
class Restart:
    what: str
    at: float  # seconds since the producer started (when it was stopped)
    back_at: float  # when it answered again (broker metadata / service /readyz)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_s = args.minutes * 60.0
        self.compression = LONGEST_RETENTION_S / (args.fill_at * self.run_s)
        self.full_at = args.fill_at * self.run_s
        self.dir = Path(args.out or tempfile.mkdtemp(prefix="streamml-soak-"))
        self.plan = DemoPlan(
            duration_s=self.run_s,
            rate=args.rate,
            entities=args.entities,
            event_rate_per_s=args.rate / self.compression,
            drift_fraction=2.0,  # no drift: the index is past the last event
            monitor_after_fraction=0.0,
            canary_share=0.1,
            label_delay_scale=LABEL_DELAY_SCALE,
            seed=args.seed,
            partitions=args.partitions,
            run_dir=self.dir,
            topic_prefix="soak.",
        )
        self.broker: Any = None
        self.children: dict[str, ServiceChild] = {}
        self.samples: list[Sample] = []
        self.restarts: list[Restart] = []
        self.unplanned: list[str] = []
        self._cpu_before: dict[str, tuple[float, float]] = {}
        self._host = HostCpu()
        self._latency_index = 0
        self._gc = GcPauses()
        self._halt = threading.Event()
        self.started = 0.0
        self.producer: SyntheticProducer | None = None
        self.changelog_config: dict[str, str] = {}
        self.audit_s = 0.0

    def say(self, message: str) -> None:
        print(f"soak {time.strftime('%H:%M:%S')} {message}", flush=True)

    # -- set-up ---------------------------------------------------------------------------

    def start_broker(self) -> None:
        from streamml.broker import LocalBroker, free_port

        broker = LocalBroker(run_dir=self.dir / "kafka", port=self.args.port or free_port())
        broker.stop()
        broker.wipe()
        self.broker = broker  # before start(): an interrupt while it starts must stop it too
        broker.start()
        self.say(f"broker up at {broker.bootstrap} (data in {broker.run_dir})")

    def kafka(self) -> Any:
        from streamml.settings import KafkaSettings, load_settings

        return load_settings(
            KafkaSettings,
            bootstrap_servers=self.broker.bootstrap,
            topic_prefix=self.plan.topic_prefix,
        )

    def provision(self) -> None:
        from streamml.topics import load_topic_specs, provision

        specs = load_topic_specs(self.plan.topic_prefix, partitions=self.plan.partitions)
        provision(self.kafka().client_config(), specs)

    def compress_changelogs(self) -> dict[str, str]:
        """Set the changelogs' segment.ms (and its jitter) and delete.retention.ms to their
        production values divided by the run's time compression (with floors); returns the
        settings.

        Without this a changelog keeps, relative to the live keys, ~180x more of the run
        in its active segment and in tombstones than it would in production, and the
        restores after a restart read 5-14x the live keys instead of ~1.2-2x."""
        from confluent_kafka.admin import (  # type: ignore[attr-defined]
            AdminClient,
            AlterConfigOpType,
            ConfigEntry,
            ConfigResource,
        )

        segment = max(MIN_SEGMENT_S, CHANGELOG_SEGMENT_S / self.compression)
        config = {
            "segment.ms": segment,
            "segment.jitter.ms": segment / 2,  # as streamml.runtime sets it: half a segment
            "delete.retention.ms": max(MIN_TOMBSTONE_S, TOMBSTONE_RETENTION_S / self.compression),
        }
        values = {k: str(int(v * 1000)) for k, v in config.items()}
        admin = AdminClient(self.kafka().client_config())
        topics = [
            t for t in admin.list_topics(timeout=30).topics
            if t.startswith(self.plan.topic_prefix) and t.endswith("-changelog")
        ]  # fmt: skip
        resources = [
            ConfigResource("topic", topic, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in values.items()
            ])
            for topic in topics
        ]  # fmt: skip
        for future in admin.incremental_alter_configs(resources).values():
            future.result(30)
        self.say(f"changelogs {', '.join(sorted(topics))}: {values}")
        return values

    def restores(self) -> dict[str, list[dict[str, Any]]]:
        """Per service, each restore its log reports: when and how many changelog records."""
        pattern = re.compile(r"ts=(\S+) .*restored (\d+) changelog records")
        out: dict[str, list[dict[str, Any]]] = {}
        for name in SERVICES:
            path = self.plan.logs_dir / f"{name}.log"
            if not path.exists():
                continue
            with path.open(errors="replace") as log_file:
                found = [pattern.search(line) for line in log_file if "changelog records" in line]
            out[name] = [{"ts": m[1], "records": int(m[2])} for m in found if m]
        return out

    def models(self) -> Path:
        """The demo's cached models (trained on the first use) and the drift reference."""
        from services.demo.models import ModelCache, cache_root
        from services.scorer.training import PRIMARY_NAME

        plan = self.plan
        cache = ModelCache(events=plan.train_events, seed=plan.seed, root=cache_root())
        if not cache.ready:
            self.say(f"training the demo models once (cached in {cache.path})")
            cache.build()
        cache.install(plan.models_dir, plan.keys_dir)
        primary = plan.models_dir / PRIMARY_NAME / "1"
        document = json.loads((primary / "metadata.json").read_text())
        for name in CLOCK_FEATURES:
            document["reference"]["features"].pop(name, None)
        path = self.dir / "drift-reference.json"
        path.write_text(json.dumps(document))
        return path

    def start_services(self, reference: Path) -> None:
        from streamml.broker import free_ports

        plan = self.plan
        plan.logs_dir.mkdir(parents=True, exist_ok=True)
        # With --port, the services listen on the ports after the broker's (a range the
        # caller chose); without it, on any free ones.
        ports = (
            [self.args.port + n for n in range(1, len(SERVICES) + 1)]
            if self.args.port
            else free_ports(len(SERVICES))
        )
        for name, port in zip(SERVICES, ports, strict=True):
            env = service_env(
                plan, name, bootstrap=self.broker.bootstrap, http_port=port, reference=reference
            )
            prefix = f"STREAMML_{name.upper()}_"
            env[f"{prefix}RUNTIME__LAG_INTERVAL_S"] = "5"
            if self.args.malloc_arena_max:
                env["MALLOC_ARENA_MAX"] = str(self.args.malloc_arena_max)
            if name == "features":
                env[f"{prefix}DEDUP_RETENTION_S"] = str(DEDUP_RETENTION_S)
            elif name == "performance":
                env[f"{prefix}LABEL_HORIZON"] = str(LABEL_HORIZON_S)
                env[f"{prefix}LATE_LABEL_MEMORY"] = str(LATE_LABEL_MEMORY_S)
                env[f"{prefix}REPORT_INTERVAL"] = "1h"
            child = ServiceChild(name, env, port, plan.logs_dir / f"{name}.log")
            child.start()
            self.children[name] = child
        self.wait_ready(list(self.children.values()))
        self.say("services ready: " + ", ".join(f"{n} :{c.port}" for n, c in self.children.items()))

    def wait_ready(self, children: Sequence[ServiceChild], timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = list(children)
        while waiting:
            for child in list(waiting):
                if not child.alive:
                    raise RuntimeError(f"{child.name} exited: {child.log_tail()}")
                if child.ready():
                    waiting.remove(child)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout_s:.0f}s: {[c.name for c in waiting]}")
            time.sleep(0.5)

    # -- sampling -------------------------------------------------------------------------

    def sample(self, started: float, producer: SyntheticProducer, probe: LatencyProbe) -> None:
        now = time.monotonic()
        s = Sample(t=now - started, load1=loadavg(), wall=time.time(), host=self._host.take())
        pids = {name: c.process.pid if c.alive and c.process else None
                for name, c in self.children.items()}  # fmt: skip
        pids["broker"] = self.broker.running_pid() if self.broker else None
        # This process too (the producer, the audit reader, the sampling): its CPU only,
        # its RSS being the audit's record of every id, not a service's.
        pids["soak"] = os.getpid()
        for name, pid in pids.items():
            figures = proc_rss_cpu(pid)
            if figures is None:
                self._cpu_before.pop(name, None)
                continue
            rss, cpu = figures
            if name != "soak":
                s.rss[name] = rss
            before = self._cpu_before.get(name)
            if before is not None and before[0] < now and cpu >= before[1]:
                s.cpu[name] = (cpu - before[1]) / (now - before[0])
            self._cpu_before[name] = (now, cpu)
        for name, child in self.children.items():
            metrics = self.scrape(child)
            lag = [v for (n, _), v in metrics.items() if n == "streamml_consumer_lag"]
            if lag:
                s.lag[name] = sum(lag)
            for (n, labels), keys in metrics.items():
                if n == "streamml_state_store_keys":
                    s.state[f"{name}/{dict(labels).get('store', '?')}"] = keys
                elif n == "streamml_heap_bytes":
                    s.heap[f"{name}/{dict(labels).get('kind', '?')}"] = keys
        data = self.broker.run_dir / "data"
        for path in data.glob("*-changelog-*"):
            topic = path.name.rsplit("-", 1)[0].removeprefix(self.plan.topic_prefix)
            s.changelog_bytes[topic] = s.changelog_bytes.get(topic, 0) + dir_bytes(path)
        end = len(probe.latency_s)
        window = sorted(probe.latency_s[self._latency_index : end])
        self._latency_index = end
        if window:
            s.latencies = len(window)
            s.p50_s = window[len(window) // 2]
            s.p99_s = window[min(len(window) - 1, math.ceil(0.99 * len(window)) - 1)]
        s.sent = producer.stats.valid_sent
        s.predictions = probe.records
        s.gc_pause_max_s, s.gc_pause_total_s = self._gc.take()
        # What survived until now is the run's record (the producer's ids, the latencies):
        # out of the collector's sight, or every full collection walks millions of ids and
        # stalls the timing thread (0.36 s pauses in the first 10 minutes of an hour,
        # 1.37 s in the last, session 9). Cycles frozen this way are never freed: fine here.
        gc.freeze()
        # Events sent but not yet predicted (read_committed): the pipeline's own lag, which
        # also moves while the broker is down and the services' gauges are stale.
        s.lag["pipeline"] = max(0, s.sent - s.predictions)
        self.samples.append(s)
        rss = " ".join(f"{k}={v / 2**20:.0f}M" for k, v in s.rss.items())
        lag = " ".join(f"{k}={v:.0f}" for k, v in s.lag.items())
        p99 = f"{s.p99_s * 1000:.0f}ms" if s.p99_s is not None else "-"
        self.say(f"t={s.t:.0f}s sent={s.sent} predictions={s.predictions} p99={p99} "
                 f"load={s.load1:.1f} rss[{rss}] lag[{lag}]")  # fmt: skip

    def scrape(self, child: ServiceChild) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        import urllib.request

        if not child.alive:
            return {}
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{child.port}/metrics", timeout=2
            ) as response:
                return parse_metrics(response.read().decode())
        except (OSError, ValueError):
            return {}

    # -- restarts -------------------------------------------------------------------------

    def restart_broker(self, started: float) -> None:
        self.say("restarting the broker (SIGTERM, then start)")
        at = time.monotonic() - started
        self.broker.stop()
        self.broker.start(timeout_s=180)
        self.restarts.append(Restart("broker", at, time.monotonic() - started))
        self.say(f"broker back after {time.monotonic() - started - at:.1f}s")

    def restart_service(self, name: str, started: float) -> None:
        child = self.children[name]
        self.say(f"restarting {name} (SIGTERM, then start)")
        at = time.monotonic() - started
        code = child.stop()
        child.start()
        self.wait_ready([child])
        self.restarts.append(Restart(name, at, time.monotonic() - started))
        self.say(f"{name} exited {code}; ready again after {time.monotonic() - started - at:.1f}s")

    def revive_dead(self, started: float) -> None:
        for name, child in self.children.items():
            if child.process is not None and not child.alive:
                code = child.process.poll()
                self.unplanned.append(f"{name} exited {code} at {time.monotonic() - started:.0f}s")
                self.say(f"{name} exited unexpectedly ({code}): {child.log_tail(3)}; restarting")
                child.stop()
                child.start()

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from streamml.codec import AvroCodec

        self.dir.mkdir(parents=True, exist_ok=True)
        self.say(f"run dir {self.dir}; {self.args.minutes:g} min at {self.args.rate:g} events/s, "
                 f"event time x{self.compression:.0f} (retention full after "
                 f"{self.full_at:.0f}s)")  # fmt: skip
        try:
            self.start_broker()
            self.provision()
            self.start_services(self.models())
            self.changelog_config = self.compress_changelogs() if self.args.changelog_time else {}
            kafka = self.kafka()
            # The soak's own clients: their connection errors during the broker restart are
            # expected, and the services' logs have the ones that matter.
            config = {**kafka.client_config(), "log_level": 2}
            timed = TimedCodec(AvroCodec.from_settings(kafka))
            # A producer behind its schedule sends as fast as it can; while the broker is
            # away (43 s at load 40) that filled librdkafka's default 100,000-message queue,
            # produce() raised BufferError and the producer thread ended mid-run.
            producer_config = {**config, "queue.buffering.max.messages": 2_000_000}
            producer = self.producer = SyntheticProducer(self.plan, producer_config, timed)
            probe = LatencyProbe(self.plan, config, AvroCodec.from_settings(kafka), timed)
            probe.start()
            producer.start()
            started = self.started = time.monotonic()
            sampler = threading.Thread(
                target=self.sample_every, args=(started, producer, probe), daemon=True
            )
            sampler.start()
            schedule = [(BROKER_RESTART_AT * self.run_s, "broker")] + [
                (at * self.run_s, name)
                for at, name in zip(SERVICE_RESTART_AT, SERVICES, strict=True)
            ]
            while producer.is_alive():
                now = time.monotonic()
                if schedule and now - started >= schedule[0][0]:
                    _, what = schedule.pop(0)
                    if what == "broker":
                        self.restart_broker(started)
                    else:
                        self.restart_service(what, started)
                self.revive_dead(started)
                time.sleep(0.2)
            self.say(f"producer done ({producer.stats.valid_sent} events); draining")
            self.drain(producer, probe)
            self._halt.set()
            sampler.join(30)
            probe.stop()
            probe.join(15)
            audit = self.audit(config, AvroCodec.from_settings(kafka), producer.stats.valid_sent)
            return self.summarise(producer, probe, audit)
        finally:
            for stop in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut cleanup
                signal.signal(stop, signal.SIG_IGN)
            self._halt.set()
            if self.producer is not None:
                self.producer.stop()
            for child in self.children.values():
                child.stop()
            if self.broker is not None:
                self.broker.stop()
            self._gc.close()

    def sample_every(
        self, started: float, producer: SyntheticProducer, probe: LatencyProbe
    ) -> None:
        next_sample = started
        while not self._halt.is_set():
            try:
                self.sample(started, producer, probe)
            except Exception:  # a failed sample is a gap in the plots, not the end of the run
                log.exception("sample failed")
            next_sample += self.args.sample_s
            self._halt.wait(max(0.0, next_sample - time.monotonic()))

    def drain(self, producer: SyntheticProducer, probe: LatencyProbe) -> None:
        """Until every valid event's prediction has been read (or the drain timeout)."""
        expected = producer.stats.valid_sent
        deadline = time.monotonic() + self.args.drain_timeout
        while time.monotonic() < deadline and probe.records < expected:
            time.sleep(0.5)

    def audit(self, config: dict[str, Any], codec: Any, expected: int) -> TopicObserver:
        """The demo's exactly-once reader over the audited topics and their dead letters,
        from the beginning, once the traffic is over: until every valid event's feature
        vector and prediction is in and nothing more has come for 3 s (a stray duplicate
        would), or nothing at all for the drain timeout. No deadline besides: an hour's
        outputs are millions of records, and a cut-off read would count as losses."""
        self.say("auditing every output from the beginning")
        observer = TopicObserver(self.plan, config, codec, results=False)
        observer.start()
        began = time.monotonic()
        while observer.is_alive():
            topics = observer.snapshot()
            done = topics["features"][1] >= expected and topics["predictions"][1] >= expected
            idle = time.monotonic() - observer.last_record_at
            if (done and idle > 3) or idle > self.args.drain_timeout:
                break
            time.sleep(0.5)
        observer.stop()
        observer.join(30)
        self.audit_s = time.monotonic() - began
        self.say(f"audit read {sum(c.records for c in observer.counts.values())} records "
                 f"in {self.audit_s:.0f}s")  # fmt: skip
        return observer

    # -- figures --------------------------------------------------------------------------

    def summarise(
        self, producer: SyntheticProducer, probe: LatencyProbe, obs: TopicObserver
    ) -> dict[str, Any]:
        stats = producer.stats
        sent = claims.Sent(
            valid_ids=frozenset(producer.valid_ids()),
            duplicates=stats.duplicates_sent,
            malformed=stats.malformed_sent,
            labels=stats.labels_sent,
            drift_event_time_ms=None,
            drift_wall_s=None,
        )
        seen = claims.Seen(
            ids={t: dict(obs.counts[t].ids) for t in ("events", "features", "predictions")},
            records={t: c.records for t, c in obs.counts.items()},
            dlq_records={t: obs.counts[t].records for t in DLQ_TOPICS},
            drift_alerts=[],
            reports=[],
            slo_alerts=[],
        )
        summary = claims.evaluate(sent, seen)
        checked = {c.name: c for c in summary.claims}
        figures = summary.figures
        # Labels beyond the shortened horizon go to labels.dlq ('late'/'orphan'), so only
        # the events' dead letters are checked against what the producer spoiled.
        in_events_dlq = seen.dlq_records.get("events.dlq", 0)
        lost = sum(
            figures[t]["missing"] + figures[t]["unexpected"] for t in ("features", "predictions")
        )
        duplicated = sum(figures[t]["duplicates"] for t in ("features", "predictions"))
        result: dict[str, Any] = {
            "minutes": self.args.minutes,
            "rate": self.args.rate,
            "time_compression": round(self.compression, 1),
            "retention_full_at_s": round(self.full_at),
            "label_delay_scale": round(LABEL_DELAY_SCALE, 4),
            "sent": {
                "valid": stats.valid_sent,
                "duplicates": stats.duplicates_sent,
                "malformed": stats.malformed_sent,
                "labels": stats.labels_sent,
                "delivery_errors": stats.delivery_errors,
            },
            "lost": lost,
            "duplicated": duplicated,
            "exactly_once": {
                **{name: checked[name].ok for name in ("no event lost", "no event duplicated")},
                "malformed events dead-lettered": in_events_dlq == stats.malformed_sent,
            },
            "dead_letters": figures.get("dead_letters"),
            "dead_letter_reasons": {t: dict(c) for t, c in obs.dlq_reasons.items() if c},
            "audit_s": round(self.audit_s, 1),
            "restarts": [asdict(r) for r in self.restarts],
            "unplanned_exits": self.unplanned,
            "recovery": self.recovery(),
            "changelog_config": self.changelog_config,
            "restores": self.restores(),
            "rss_mib_growth_pct_per_h": self.growth(
                {
                    n: lambda s, n=n: s.rss[n] / 2**20 if n in s.rss else None
                    for n in (*SERVICES, "broker")
                }
            ),
            "state_growth_pct_per_h": self.growth(self.state_series()),
            "changelog_growth_pct_per_h": self.growth(self.changelog_series()),
            "latency": self.latency(probe),
            "log_cleaner": self.cleaner(),
            "load1": self.load(),
            "cpu": self.cpu(),
            "dir": str(self.dir),
        }
        (self.dir / "samples.json").write_text(json.dumps([asdict(s) for s in self.samples]))
        path = self.dir / "soak-report.html"
        path.write_text(self.render(result))
        result["report"] = str(path)
        return result

    def state_series(self) -> dict[str, Any]:
        names = sorted({k for s in self.samples for k in s.state})
        return {n: lambda s, n=n: s.state.get(n) for n in names}

    def changelog_series(self) -> dict[str, Any]:
        names = sorted({k for s in self.samples for k in s.changelog_bytes})
        return {n: lambda s, n=n: s.changelog_bytes.get(n) for n in names}

    def growth(self, series: dict[str, Any]) -> dict[str, Any]:
        """Per series: least-squares growth per hour as a % of the mean, after the retention
        is full, before the series' owner restarted and after (from a minute after)."""
        result: dict[str, Any] = {}
        end = self.samples[-1].t if self.samples else 0.0
        for name, value_of in series.items():
            owner = name.split("/", 1)[0].split("-", 1)[0]  # "features/dedup", "features-dedup-…"
            restart = next((r for r in self.restarts if r.what == owner), None)
            segments = {"after_restart": (self.full_at, end)}
            if restart is not None:
                segments = {
                    "before_restart": (self.full_at, restart.at),
                    "after_restart": (max(self.full_at, restart.back_at + 60), end),
                }
            out: dict[str, Any] = {}
            for label, (a, b) in segments.items():
                points = [(s.t, value_of(s)) for s in self.samples if a <= s.t <= b]
                points = [(t, v) for t, v in points if v is not None]
                out[label] = slope_pct_per_h(points)
            out["last"] = next(
                (value_of(s) for s in reversed(self.samples) if value_of(s) is not None), None
            )
            result[name] = out
        return result

    def recovery(self) -> list[dict[str, Any]]:
        """Per restart and group: peak lag after it and seconds until back to steady."""
        out: list[dict[str, Any]] = []
        if not self.restarts:
            return out
        # The steady level: before any restart, after the first minutes' warm-up.
        warmup, first = min(120.0, self.run_s / 10), self.restarts[0].at
        for restart in self.restarts:
            groups = (
                (*SERVICES, "pipeline") if restart.what == "broker" else (restart.what, "pipeline")
            )
            for group in groups:
                before = [s.lag[group] for s in self.samples
                          if warmup <= s.t < first and group in s.lag]  # fmt: skip
                steady = percentile(before, 0.9) if before else 0.0
                threshold = max(1.5 * steady, self.args.rate)
                after = [
                    (s.t, s.lag[group])
                    for s in self.samples
                    if s.t >= restart.at and group in s.lag
                ]
                recovered = next(
                    (t for t, v in after if t >= restart.back_at and v <= threshold), None
                )
                episode = [v for t, v in after if recovered is None or t <= recovered]
                peak = max(episode, default=None)
                since = (
                    (None, None)
                    if recovered is None
                    else (round(recovered - restart.at, 1), round(recovered - restart.back_at, 1))
                )
                out.append({
                    "restart": restart.what, "group": group, "steady_lag": steady,
                    "threshold": threshold, "peak_lag": peak,
                    "recovered_s_after_restart": since[0], "recovered_s_after_back": since[1],
                })  # fmt: skip
        return out

    def latency(self, probe: LatencyProbe) -> dict[str, Any]:
        at, lat = list(probe.latency_at), list(probe.latency_s)
        if not at:
            return {}
        origin = self.started
        warmup, window = self.windows()
        end = at[-1] - origin

        def p(a: float, b: float) -> float | None:
            lo = bisect.bisect_left(at, origin + a)
            hi = bisect.bisect_right(at, origin + b)
            values = sorted(lat[lo:hi])
            return round(percentile(values, 0.99), 4) if values else None

        def gc_max(a: float, b: float) -> float | None:
            pauses = [s.gc_pause_max_s for s in self.samples if a <= s.t <= b]
            return round(max(pauses), 4) if pauses else None

        first = p(warmup, warmup + window)
        last = p(self.run_s - window, self.run_s)  # steady traffic only, not the drain
        # As long once every retention window is full, up to the broker's restart: the state
        # is as large there as at the end, so last/after-full says whether the tail grows
        # with time, last/first also whether it grows with the state.
        a, b = self.after_full(window)
        full = p(a, b)
        return {
            "window_s": window, "warmup_s": warmup, "observed_s": round(end),
            "p99_first_s": first, "p99_last_s": last,
            "after_full_s": [round(a), round(b)], "p99_after_full_s": full,
            "last_over_after_full": round(last / full, 3) if full and last else None,
            # The measuring process's own longest GC pause in each window (it delays receipts).
            "gc_pause_max_first_s": gc_max(warmup, warmup + window),
            "gc_pause_max_last_s": gc_max(self.run_s - window, self.run_s),
            "last_over_first": round(last / first, 3) if first and last else None,
            "p50_overall_s": round(statistics.median(lat), 4),
            "p99_overall_s": round(percentile(sorted(lat), 0.99), 4),
        }  # fmt: skip

    def windows(self) -> tuple[float, float]:
        """The warm-up, and the length of the first and the last window of traffic.

        The warm-up (5 minutes of the hour) covers the services' first fetches and the label
        stream's ramp: with the delays scaled (``LABEL_DELAY_SCALE``), the labels due in the
        first window are 98 % of the steady rate (from 400,000 draws of the delay)."""
        return min(300.0, self.run_s / 10), min(600.0, self.run_s / 4)

    def p99_windows(self) -> dict[str, tuple[float, float]]:
        """The p99's three windows, in seconds since the producer started."""
        warmup, window = self.windows()
        return {"first": (warmup, warmup + window), "after_full": self.after_full(window),
                "last": (self.run_s - window, self.run_s)}  # fmt: skip

    def after_full(self, window: float) -> tuple[float, float]:
        """The window that starts when the retention is full, ended by the broker's restart."""
        return self.full_at, min(self.full_at + window, BROKER_RESTART_AT * self.run_s)

    def cleaner(self) -> dict[str, Any]:
        """The broker's log cleaner: seconds it ran in each sample's interval, and in the
        two windows of the p99s (docs/decisions/changelog-segment-jitter.md)."""
        path = self.broker.log_file if self.broker is not None else None
        if path is None or not path.exists() or not self.samples:
            return {}
        with path.open(errors="replace") as lines:
            passes = brokerlog.cleaner_passes(lines)
        ends = [s.wall for s in self.samples]
        for s, c in zip(self.samples, brokerlog.seconds_per_interval(passes, ends,
                                                                      self.args.sample_s),
                        strict=True):  # fmt: skip
            s.cleaner_s = round(c, 3)
        figures = {
            name: brokerlog.window_figures(
                [s.cleaner_s for s in self.samples if a <= s.t <= b], self.args.sample_s
            )
            for name, (a, b) in self.p99_windows().items()
        }
        return {"passes": len(passes), **figures}

    def cpu(self) -> dict[str, Any]:
        """Where the CPU went in the p99's three windows: the load average, each process's
        cores (the services, the broker, this process) and the machine's split and stalls
        (benchmarks/hostcpu.py), each a mean over the window's samples."""

        def means(a: float, b: float) -> dict[str, Any] | None:
            picked = [s for s in self.samples if a <= s.t <= b]
            if not picked:
                return None

            def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
                names = sorted({k for row in rows for k in row})
                return {n: round(statistics.mean(r[n] for r in rows if n in r), 3) for n in names}

            return {"load1": round(statistics.mean(s.load1 for s in picked), 2),
                    "cores": mean_of([s.cpu for s in picked]),
                    "host": mean_of([s.host for s in picked if s.host])}  # fmt: skip

        return {name: means(a, b) for name, (a, b) in self.p99_windows().items()}

    def load(self) -> dict[str, float]:
        values = [s.load1 for s in self.samples]
        if not values:
            return {}
        return {"median": round(statistics.median(values), 2), "max": round(max(values), 2),
                "cores": os.cpu_count() or 0}  # fmt: skip

    def render(self, result: dict[str, Any]) -> str:
        markers = [(r.at / 60, f"{r.what} restart") for r in self.restarts]
        markers.append((self.full_at / 60, "retention full"))

        def chart(series: dict[str, list[tuple[float, float]]], y_label: str) -> str:
            return report.line_chart(
                sorted(series.items()), x_label="minutes", y_label=y_label, markers=markers
            )

        rss: dict[str, list[tuple[float, float]]] = {}
        heap: dict[str, list[tuple[float, float]]] = {}
        lag: dict[str, list[tuple[float, float]]] = {}
        state: dict[str, list[tuple[float, float]]] = {}
        changelog: dict[str, list[tuple[float, float]]] = {}
        pause = "soak's own GC pause (max)"
        latency: dict[str, list[tuple[float, float]]] = {"p99": [], "p50": [], pause: []}
        cleaner = "log cleaner (s per interval)"
        load: dict[str, list[tuple[float, float]]] = {"load1": [], cleaner: []}
        cores: dict[str, list[tuple[float, float]]] = {}
        host: dict[str, list[tuple[float, float]]] = {}
        for s in self.samples:
            m = s.t / 60
            for k, v in s.rss.items():
                rss.setdefault(k, []).append((m, v / 2**20))
            for k, v in s.heap.items():
                heap.setdefault(k, []).append((m, v / 2**20))
            for k, v in s.lag.items():
                lag.setdefault(k, []).append((m, v))
            for k, v in s.state.items():
                state.setdefault(k, []).append((m, v / 1000))
            for k, v in s.changelog_bytes.items():
                changelog.setdefault(k, []).append((m, v / 2**20))
            if s.p99_s is not None and s.p50_s is not None:
                latency["p99"].append((m, s.p99_s * 1000))
                latency["p50"].append((m, s.p50_s * 1000))
            latency[pause].append((m, s.gc_pause_max_s * 1000))
            load["load1"].append((m, s.load1))
            for k, v in s.cpu.items():
                cores.setdefault(k, []).append((m, v))
            for k, v in s.host.items():
                host.setdefault(k, []).append((m, v))
            load[cleaner].append((m, s.cleaner_s))
        body = "".join([
            "<h1>streamml soak</h1>",
            f"<p class='note'>{self.args.minutes:g} min at {self.args.rate:g} events/s, "
            f"event time x{self.compression:.0f}; the longest retention (1.5 days of event "
            f"time) is full after {self.full_at / 60:.0f} min. Restarts and "
            "'retention full' are marked.</p>",
            "<h2>RSS (MiB)</h2>", chart(rss, "RSS MiB"),
            "<h2>C heap per service (MiB)</h2>", chart(heap, "MiB"),
            "<p class='note'>glibc's mallinfo2 every 30 s: in use, free (kept; what a trim "
            "gives back), mmapped (large chunks). The rest of the RSS is mostly CPython's "
            "arenas for small objects, code and stacks.</p>",
            "<h2>Consumer lag per group (records)</h2>",
            chart({k: v for k, v in lag.items() if k != "drift"}, "records"),
            "<p class='note'>pipeline: events sent but not yet predicted.</p>",
            "<h2>Consumer lag of drift (records)</h2>",
            chart({"drift": lag.get("drift", [])}, "records"),
            "<h2>End-to-end latency per 10 s (ms)</h2>", chart(latency, "ms"),
            "<h2>State-store keys (thousands)</h2>", chart(state, "keys (k)"),
            "<h2>Changelog topics on disk (MiB)</h2>", chart(changelog, "MiB"),
            "<h2>Load average (1 min) and the broker's log cleaner</h2>",
            chart(load, "load / s"),
            "<p class='note'>The seconds the log cleaner ran in each 10-s interval; "
            "bursts of it were the p99's tail (docs/decisions/changelog-segment-jitter.md)."
            "</p>",
            "<h2>CPU per process (cores)</h2>", chart(cores, "cores"),
            "<p class='note'>soak: this process (the producer, the audit reader, the "
            "sampling).</p>",
            "<h2>The machine's CPU (cores) and stalls (share of the interval)</h2>",
            chart({k: v for k, v in host.items() if not k.endswith("_stall")}, "cores"),
            chart({k: v for k, v in host.items() if k.endswith("_stall")}, "share"),
            "<p class='note'>From /proc/stat and /proc/pressure: steal is time the "
            "hypervisor gave another guest; cpu_stall/io_stall the share of the interval in "
            "which some task waited for a CPU or for I/O.</p>",
            "<h2>Result</h2><pre>", json.dumps(result, indent=2, default=str), "</pre>",
        ])  # fmt: skip
        head = (
            f"<!doctype html><meta charset='utf-8'><title>soak</title><style>{report.STYLE}</style>"
        )
        return head + body


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted-or-not ``values`` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def slope_pct_per_h(points: Sequence[tuple[float, float]]) -> dict[str, float] | None:
    """Least-squares slope of ``(seconds, value)`` per hour, and as a % of the mean."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    slope = sum((t - mt) * (v - mv) for t, v in points) / var * 3600
    return {
        "per_h": round(slope, 1),
        "pct_per_h": round(100 * slope / mv, 2) if mv else 0.0,
        "mean": round(mv, 1),
        "span_s": round(points[-1][0] - points[0][0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="Minutes of traffic.")
    parser.add_argument("--rate", type=float, default=1000.0, help="Events per second.")
    parser.add_argument("--entities", type=int, default=5000, help="Distinct cards.")
    parser.add_argument("--partitions", type=int, default=2, help="Partitions per topic.")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--fill-at", type=float, default=0.2, help="Share of the run when the retention is full."
    )
    parser.add_argument("--sample-s", type=float, default=10.0, help="Seconds between samples.")
    parser.add_argument("--drain-timeout", type=float, default=600.0,
                        help="Longest wait for the outputs after the producer ends.")  # fmt: skip
    parser.add_argument("--port", type=int, default=0,
                        help="Broker port (default: a free one); the services' HTTP ports are "
                        "the next four.")  # fmt: skip
    parser.add_argument(
        "--changelog-time", action=argparse.BooleanOptionalAction, default=True,
        help="Compress the changelogs' segment.ms and delete.retention.ms like event time.",
    )  # fmt: skip
    parser.add_argument("--malloc-arena-max", type=int, default=0,
                        help="MALLOC_ARENA_MAX of the services (default: unset).")  # fmt: skip
    parser.add_argument("--out", default=None, help="Run directory (default: a new temp dir).")
    args = parser.parse_args()
    problems = [
        (args.minutes < 2, "--minutes must be at least 2 (the restarts need room)"),
        (not 1 <= args.rate <= 5000, "--rate must be between 1 and 5000 events/s"),
        (not 0.05 <= args.fill_at <= 0.35, "--fill-at must be between 0.05 and 0.35"),
        (args.sample_s < 1, "--sample-s must be at least 1"),
        (args.entities < 10, "--entities must be at least 10"),
        (args.malloc_arena_max < 0, "--malloc-arena-max must be 0 (unset) or more"),
    ]
    for bad, message in problems:
        if bad:
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # SIGTERM (a job runner's stop, `kill`) stops the run like Ctrl-C: the services and the
    # broker run in sessions of their own, so only the soak's cleanup reaches them.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = Soak(args).run()
    except KeyboardInterrupt:
        print("soak interrupted: stopped the services and the broker it started", file=sys.stderr)
        raise SystemExit(130) from None
    print(json.dumps(result, default=str))


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
