"""One demo run: broker, topics, models, four service processes, producer, live view,
drain, summary and report; every child stopped cleanly however the run ends.

The services run as separate processes (``python -m services.<name>``), each in its own
session so that Ctrl-C reaches only the demo, which then stops them in pipeline order
with SIGTERM (SIGKILL after a grace period), and stops the broker it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rich.console import Console
from rich.live import Live

from services.demo import claims, report, scenarios, view
from services.demo.observer import MetricsScraper, SampleKey, TopicObserver, total
from services.demo.plan import (
    CLOCK_FEATURES,
    DLQ_TOPICS,
    SERVICES,
    DemoPlan,
    broker_port,
    service_env,
)
from services.demo.producer import SyntheticProducer
from streamml.errors import BrokerError, StreamMLError

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 180.0
_STOP_GRACE_S = 20.0


class DemoError(StreamMLError):
    """The demo could not run (a service did not start, the broker is unreachable)."""


class ServiceChild:
    """One service process of the demo."""

    def __init__(self, name: str, env: dict[str, str], port: int, log_path: Path) -> None:
        self.name, self.env, self.port, self.log_path = name, env, port, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._terminated = False

    def start(self) -> None:
        self._terminated = False  # a restarted child is signalled again when stopped
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the demo, which stops us in order
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/readyz", timeout=1
            ) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def terminate(self) -> None:
        """SIGTERM, once: the process begins its clean shutdown (:meth:`stop` waits)."""
        if self.process is not None and self.process.poll() is None and not self._terminated:
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self) -> int | None:
        """SIGTERM (unless sent already), wait, SIGKILL when it does not end; returns the
        exit code."""
        code = None
        if self.process is not None:
            self.terminate()
            try:
                code = self.process.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.name, _STOP_GRACE_S)
                self.process.kill()
                code = self.process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


def _moved_most(
    series: dict[str, list[tuple[float, float]]], split: float | None, keep: int = 6
) -> list[tuple[str, list[tuple[float, float]]]]:
    """The series of features the drift changes whose level moved most across the drift
    point (counts and gaps move with the cards' warm-up, not with the drift)."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    def moved(points: list[tuple[float, float]]) -> float:
        if split is None:
            return max(v for _, v in points)
        return mean([v for t, v in points if t >= split]) - mean(
            [v for t, v in points if t < split]
        )

    candidates = {
        name: points
        for name, points in series.items()
        if points and claims.changed_by_drift(name.rsplit(" ", 1)[0])
    }
    return sorted(candidates.items(), key=lambda kv: -moved(kv[1]))[:keep]


def _partition_marks(samples: Mapping[SampleKey, float]) -> scenarios.PartitionMarks:
    """``(topic, partition) -> (event time read, consumer lag)`` from one scrape of the
    performance service (partitions with an event time only)."""
    times: dict[tuple[str, int], float] = {}
    lags: dict[tuple[str, int], float] = {}
    for (name, labels), value in samples.items():
        if name == "streamml_performance_stream_event_time_seconds":
            found = times
        elif name == "streamml_consumer_lag":
            found = lags
        else:
            continue
        tags = dict(labels)
        found[(tags.get("topic", ""), int(tags.get("partition", -1)))] = value
    return {key: (value, lags.get(key, 0.0)) for key, value in times.items()}


def scenario_claims(scenario: scenarios.Scenario, outcome: scenarios.Outcome) -> list[claims.Claim]:
    """A scenario run's claims: the failure was detected (control: nothing fired) and
    nothing fired before the injection."""
    if scenario.name == "control":
        alarms = ", ".join(sorted({a.signal for a in outcome.false_alarms})) or "none"
        detail = f"{len(outcome.false_alarms)} alert(s) (signals: {alarms})"
        return [claims.Claim("control run quiet", not outcome.false_alarms, detail)]
    first = outcome.first
    detected = claims.Claim(
        f"{scenario.name} detected",
        first is not None,
        f"first {first.signal} ({first.detail}) {outcome.first_wall_s} s wall / "
        f"{outcome.first_event_s} s event time after the injection"
        if first is not None
        else f"no alert after the injection (expected: {', '.join(scenario.expected)})",
    )
    quiet = claims.Claim(
        "no alert before the injection",
        not outcome.false_alarms,
        f"{len(outcome.false_alarms)} false alarm(s)",
    )
    return [detected, quiet]


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class Demo:
    """Runs one :class:`DemoPlan`; :meth:`run` returns the exit code."""

    def __init__(self, plan: DemoPlan, *, headless: bool, console: Console | None = None) -> None:
        self.plan = plan
        self.headless = headless
        self.console = console or Console(soft_wrap=headless)
        self.children: list[ServiceChild] = []
        self.broker: Any = None
        self.bootstrap = plan.bootstrap or ""
        self.producer: SyntheticProducer | None = None
        self.observer: TopicObserver | None = None
        self.scraper: MetricsScraper | None = None
        self.interrupted = False
        self.failure: str | None = None
        self._reference_job: threading.Thread | None = None
        self._reference_error: BaseException | None = None
        self.scenario = scenarios.get(plan.scenario) if plan.scenario else None
        self._to_promote: tuple[str, str] | None = None
        self._promoted = False
        self.scenario_alerts: list[scenarios.Alert] = []
        """Alerts seen outside the result topics: fail-stops, stopped services."""
        self.duplicate_samples: list[tuple[float, float, float]] = []
        self.stream_time_samples: list[tuple[float, float, float]] = []
        self.partition_samples: list[tuple[float, scenarios.PartitionMarks]] = []
        self.stopped_early = False
        self.phases: dict[str, float] = {}
        self._phase_started = time.monotonic()

    # -- steps ------------------------------------------------------------------------

    def _phase(self, name: str) -> None:
        """Wall seconds of the step that just ended (``figures.phases_s`` of the summary:
        where a run's time goes)."""
        now = time.monotonic()
        self.phases[name] = round(now - self._phase_started, 2)
        self._phase_started = now

    def _say(self, message: str) -> None:
        self.console.print(f"[bold]demo[/bold] {message}")

    def _prepare_dirs(self) -> None:
        plan = self.plan
        shutil.rmtree(plan.logs_dir, ignore_errors=True)
        plan.logs_dir.mkdir(parents=True, exist_ok=True)
        plan.report_path.unlink(missing_ok=True)
        plan.summary_path.unlink(missing_ok=True)

    def _start_broker(self) -> None:
        from streamml.broker import LocalBroker

        if self.plan.bootstrap:
            self._say(f"using the broker at {self.plan.bootstrap} (topic prefix "
                      f"{self.plan.topic_prefix!r})")  # fmt: skip
            return
        broker = LocalBroker(run_dir=self.plan.run_dir / "kafka", port=broker_port())
        # A fresh broker each run: the same seed re-sends the same event ids, which the
        # previous run's dedup state would (rightly) drop as duplicates.
        broker.stop()
        broker.wipe()
        self._say(f"starting Kafka on {broker.bootstrap} (first run fetches it with Maven)")
        broker.start()
        self.broker = broker
        self.bootstrap = broker.bootstrap

    def _kafka(self) -> Any:
        from streamml.settings import KafkaSettings, load_settings

        overrides: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        overrides["topic_prefix"] = self.plan.topic_prefix
        return load_settings(KafkaSettings, **overrides)

    def _provision(self) -> None:
        from streamml.topics import load_topic_specs, provision

        specs = load_topic_specs(self.plan.topic_prefix, partitions=self.plan.partitions)
        outcome = provision(self._kafka().client_config(), specs)
        created = sum(1 for v in outcome.values() if v == "created")
        self._say(f"topics: {created} created, {len(outcome) - created} already there")

    def _train(self) -> Path:
        """Signed models from the cache outside the repository (trained on the first run
        with these inputs only), copied into the run's directory."""
        from services.demo.models import PRIMARY_NAME

        plan = self.plan
        cache = self._model_cache()
        if cache.ready:
            self._say(f"reusing the signed models in {cache.path}")
        else:
            self._say(
                f"training and signing the demo models (primary, fallback, candidate) on "
                f"{plan.train_events:,} events: first run only, cached in {cache.path}"
            )
            started = time.monotonic()
            cache.build()
            self._say(f"  trained in {time.monotonic() - started:.0f}s")
        cache.install(plan.models_dir, plan.keys_dir)
        if self.scenario is not None and self.scenario.model is not None:
            self._to_promote = scenarios.prepare_model(
                self.scenario.model, plan.models_dir, plan.keys_dir, plan.seed
            )
            self._say(f"  scenario {self.scenario.name}: signed "
                      f"{'/'.join(self._to_promote)}, promoted at the injection")  # fmt: skip
        for path in sorted(plan.models_dir.glob("*/*/metadata.json")):
            auc = json.loads(path.read_text())["metrics"]["auc"]
            self._say(f"  {path.parent}: AUC {auc:.3f} (validation)")
        return plan.models_dir / PRIMARY_NAME / "1"

    def _model_cache(self) -> Any:
        from services.demo.models import ModelCache, cache_root

        plan = self.plan
        seed = plan.seed if plan.model_seed is None else plan.model_seed
        return ModelCache(events=plan.train_events, seed=seed, root=cache_root())

    def _drift_reference(self, primary: Path) -> Path:
        """Where the drift service's reference is (written now, or by a background job
        before the drift service joins: see :meth:`_write_reference`)."""
        plan = self.plan
        path = plan.run_dir / "drift-reference.json"
        path.unlink(missing_ok=True)
        cache = self._model_cache()
        if plan.n_events <= plan.train_events or cache.has_reference(plan.n_events):
            self._write_reference(primary, path)
        elif plan.monitor_from_ms:
            # Only the drift service needs it, and it monitors from after the warm-up:
            # build it meanwhile (the service starts once it is there), so the first event
            # never waits for it.
            self._say(f"building the drift reference over {plan.n_events:,} events in the "
                      "background (cached for the next run of this length)")  # fmt: skip
            self._reference_job = threading.Thread(
                target=self._reference_in_background, args=(primary, path), daemon=True
            )
            self._reference_job.start()
        else:
            self._say(f"building the drift reference over {plan.n_events:,} events (cached "
                      "for the next run of this length)")  # fmt: skip
            self._write_reference(primary, path)
        return path

    def _reference_in_background(self, primary: Path, path: Path) -> None:
        try:
            self._write_reference(primary, path)
        except BaseException as exc:  # reported when the drift service would start
            self._reference_error = exc

    def _write_reference(self, primary: Path, path: Path) -> None:
        """The primary's metadata with a reference over the run's event time, without the
        clock features, for the drift service.

        A window of a few minutes never looks like a reference spanning hours on time of
        day, so monitoring those inputs would only raise alarms about the clock. The
        reference covers as many events as the run (built from the same generator, cached),
        so the entity histories' growth over the run is in it too.
        """
        document = json.loads((primary / "metadata.json").read_text())
        document["reference"] = self._model_cache().reference_for(self.plan.n_events, primary)
        features = document["reference"]["features"]
        for name in CLOCK_FEATURES:
            features.pop(name, None)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(document))
        scratch.replace(path)

    @property
    def _reference_ready(self) -> bool:
        if self._reference_error is not None:
            raise DemoError(f"the drift reference could not be built: {self._reference_error}")
        return self._reference_job is None or not self._reference_job.is_alive()

    def _start_services(self, reference: Path) -> None:
        """Start every service (drift once its reference is built); wait until they are ready."""
        from streamml.broker import free_ports

        for name, port in zip(SERVICES, free_ports(len(SERVICES)), strict=True):
            env = service_env(
                self.plan, name, bootstrap=self.bootstrap, http_port=port, reference=reference
            )
            child = ServiceChild(name, env, port, self.plan.logs_dir / f"{name}.log")
            if name != "drift" or self._reference_ready:
                child.start()
            self.children.append(child)
        started = [c for c in self.children if c.process is not None]
        self._say("services started: " + ", ".join(
            f"{c.name} :{c.port}" for c in started
        ) + f" (logs in {self.plan.logs_dir})")  # fmt: skip
        self._wait_ready(started)
        self._say("services ready: " + ", ".join(c.name for c in started))

    def _wait_ready(self, children: list[ServiceChild]) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        waiting = list(children)
        while waiting:
            for child in list(waiting):
                if not child.alive:
                    raise DemoError(
                        f"{child.name} exited with code {child.process and child.process.poll()}"
                        f": {child.log_tail()}"
                    )
                if child.ready():
                    waiting.remove(child)
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in waiting)
                raise DemoError(f"not ready after {_READY_TIMEOUT_S:.0f}s: {names}")
            time.sleep(0.3)

    def _start_late(self) -> None:
        """Start the drift service once its reference, built in the background, is there."""
        for child in self.children:
            if child.process is None and self._reference_ready:
                child.start()
                if self.scraper is not None:
                    self.scraper.views[child.name].note = "starting"
                self._say(f"{child.name} starts: its reference is built")

    # -- the run ----------------------------------------------------------------------

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, _interrupt)
        # Also when started with SIGINT ignored (a background job of a script): Ctrl-C and
        # `kill -INT` must stop the demo cleanly either way.
        signal.signal(signal.SIGINT, _interrupt)
        summary: claims.Summary | None = None
        try:
            self._prepare_dirs()
            self._start_broker()
            self._provision()
            self._phase("broker_and_topics")
            reference = self._drift_reference(self._train())
            self._phase("models")
            self._start_services(reference)
            self._phase("services_ready")
            self._feed_and_watch()
            self._phase("traffic")
            if not self.interrupted and not self.stopped_early:
                self._drain()
                self._phase("drain")
        except KeyboardInterrupt:
            self.interrupted = True
            self._say("interrupted: stopping everything")
        except (BrokerError, DemoError) as exc:
            self.failure = str(exc)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
            try:
                if self.producer is not None:
                    summary = self._finish()
            finally:
                self._stop_all()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, previous)
        if self.failure:
            self.console.print(f"[red]error:[/red] {self.failure}")
            return 1
        if self.interrupted:
            return 130
        return 0 if summary is not None and summary.ok else 1

    def _feed_and_watch(self) -> None:
        plan = self.plan
        kafka = self._kafka()
        from streamml.codec import AvroCodec

        codec = AvroCodec.from_settings(kafka)
        config = kafka.client_config()
        self.scraper = MetricsScraper({c.name: c.port for c in self.children})
        for child in self.children:
            if child.process is None:
                self.scraper.views[child.name].note = "building its reference"
        self.observer = TopicObserver(plan, config, AvroCodec.from_settings(kafka))
        self.producer = SyntheticProducer(plan, config, codec, self.scenario)
        self.scraper.start()
        self.observer.start()
        self.producer.start()
        injects = (
            f"scenario {self.scenario.name} ({self.scenario.failure})"
            if self.scenario is not None
            else "drift"
        )
        self._say(
            f"producing {plan.rate:.0f} events/s for {plan.duration_s:.0f}s from "
            f"{plan.entities:,} cards; event time runs x{plan.time_compression:.0f}; "
            f"{injects} after {plan.drift_index:,} events"
            + (f"; drift monitors from {plan.warmup_s:.0f}s in (the cards' cold start before "
               "it is read, not monitored)" if plan.monitor_from_ms else "")
        )  # fmt: skip
        self._watch(lambda: self.producer is not None and self.producer.is_alive(), "producing")

    def _watch(self, keep_going: Any, phase: str, deadline: float | None = None) -> None:
        started = self.producer.stats.started_wall if self.producer else time.monotonic()
        last_line = 0.0

        def frame() -> Any:
            assert self.producer and self.observer and self.scraper
            return view.render(
                views=self.scraper.views,
                stats=self.producer.stats,
                elapsed_s=time.monotonic() - started,
                duration_s=self.plan.duration_s,
                compression=self.plan.time_compression,
                topics=self.observer.snapshot(),
                alerts=[a for _, a in self.observer.drift_alerts],
                phase=phase,
            )

        live: Any = (
            contextlib.nullcontext()
            if self.headless
            else Live(frame(), console=self.console, refresh_per_second=2, transient=False)
        )
        with live:
            while keep_going():
                if deadline is not None and time.monotonic() > deadline:
                    return
                self._start_late()
                self._scenario_step()
                dead = [c.name for c in self.children if c.process is not None and not c.alive]
                if dead and self.scenario is not None:
                    self._stopped(dead)
                    return
                if dead:
                    tails = "; ".join(
                        f"{c.name}: {c.log_tail(2)}"
                        for c in self.children
                        if c.process is not None and not c.alive
                    )
                    raise DemoError(f"service(s) stopped during the run: {tails}")
                if self.headless:
                    now = time.monotonic()
                    if now - last_line >= 10:
                        last_line = now
                        self._headless_line(phase, now - started)
                else:
                    live.update(frame())
                time.sleep(0.5)

    # -- failure-injection scenarios ----------------------------------------------------

    def _since_start(self) -> float:
        assert self.producer is not None
        return time.monotonic() - self.producer.stats.started_wall

    def _scenario_step(self) -> None:
        """Promote the scenario's model at the injection point; sample the metrics the
        suite reads alerts from (duplicates dropped, fail-stop halts)."""
        if self.scenario is None or self.producer is None or self.scraper is None:
            return
        stats = self.producer.stats
        if self._to_promote is not None and not self._promoted and stats.drift_wall_s is not None:
            self._promoted = True
            threading.Thread(target=self._promote, name="demo-promote", daemon=True).start()
        features = self.scraper.views.get("features")
        if features is not None and features.up:
            at = features.scraped_at - stats.started_wall
            if not self.duplicate_samples or self.duplicate_samples[-1][0] < at:
                self.duplicate_samples.append((
                    at,
                    total(features.samples, "streamml_features_duplicates_total"),
                    total(features.samples, "streamml_records_in_total"),
                ))  # fmt: skip
        self._sample_stream_times(stats.started_wall)
        for name, service in self.scraper.views.items():
            halted = service.up and total(service.samples, "streamml_halted") > 0
            known = any(a.signal == "fail_stop" and a.source == name for a in self.scenario_alerts)
            if halted and not known:
                self.scenario_alerts.append(
                    scenarios.Alert("fail_stop", self._since_start(), name, "halted (fail-stop)")
                )

    def _sample_stream_times(self, started_wall: float) -> None:
        """The performance service's furthest event time per input stream (predictions,
        labels) and per partition with its consumer lag, once per scrape: what
        :func:`scenarios.label_stall_alerts` and :func:`scenarios.partition_stall_alerts`
        judge."""
        performance = self.scraper.views.get("performance") if self.scraper else None
        if performance is None or not performance.up:
            return
        at = performance.scraped_at - started_wall
        if self.stream_time_samples and self.stream_time_samples[-1][0] >= at:
            return
        marks = {"predictions": 0.0, "labels": 0.0}
        for (name, labels), value in performance.samples.items():
            if name != "streamml_performance_stream_event_time_seconds":
                continue
            topic = dict(labels).get("topic", "")
            for stream, mark in marks.items():
                if topic == self.plan.topic(stream):
                    marks[stream] = max(mark, value)
        if marks["predictions"] > 0 and marks["labels"] > 0:
            self.stream_time_samples.append((at, marks["predictions"], marks["labels"]))
        self.partition_samples.append((at, _partition_marks(performance.samples)))

    def _stopped(self, dead: list[str]) -> None:
        """A service stopped during a scenario: an alert (the run ends here)."""
        for child in self.children:
            if child.name in dead:
                self.scenario_alerts.append(scenarios.Alert(
                    "fail_stop", self._since_start(), child.name, f"exited: {child.log_tail(1)}"
                ))  # fmt: skip
        self.stopped_early = True
        self._say(f"{', '.join(dead)} stopped: the run ends here")

    def _promote(self) -> None:
        """Promote the scenario's version to primary on the scorer's control topic, as
        ``streamml scorer promote`` does (in-process: a CLI start costs seconds)."""
        from services.scorer.control import TOPIC, control_record
        from services.scorer.follower import publish_instruction
        from streamml.codec import AvroCodec

        assert self._to_promote is not None
        name, version = self._to_promote
        kafka = self._kafka()
        value = control_record(
            "primary", "promote", model_name=name, model_version=version,
            issued_at_ms=time.time_ns() // 1_000_000, issued_by="streamml demo",
            reason=f"scenario {self.plan.scenario}",
        )  # fmt: skip
        try:
            publish_instruction(kafka, kafka.topic(TOPIC), AvroCodec.from_settings(kafka), value)
        except StreamMLError as exc:
            self.failure = f"promoting {name}/{version} failed: {exc}"

    def _scenario_outcome(self) -> scenarios.Outcome:
        assert self.scenario is not None and self.producer and self.observer
        stats = self.producer.stats
        shift = self.observer.started - stats.started_wall  # observer clock -> producer's

        def moved(records: list[tuple[float, dict[str, Any]]]) -> list[tuple[float, Any]]:
            return [(seen + shift, record) for seen, record in records]

        alerts = [
            *self.scenario_alerts,
            *scenarios.drift_alerts(moved(self.observer.drift_alerts)),
            *scenarios.slo_alerts(moved(self.observer.slo_alerts)),
            *scenarios.duplicate_alerts(self.duplicate_samples),
            *scenarios.label_stall_alerts(self.stream_time_samples),
            *scenarios.partition_stall_alerts(self.partition_samples),
            *(
                scenarios.Alert("validation", seen + shift, topic, reason)
                for seen, topic, reason in self.observer.dead_letters
            ),
        ]
        return scenarios.outcome(
            self.scenario.name,
            alerts,
            injection_wall_s=stats.drift_wall_s,
            injection_event_ms=stats.drift_event_time_ms,
            timeline=stats.timeline,
        )

    def _headless_line(self, phase: str, elapsed: float) -> None:
        assert self.producer and self.observer
        stats = self.producer.stats
        topics = self.observer.snapshot()
        self._say(
            f"{phase} {elapsed:.0f}s: sent {stats.valid_sent} (+{stats.duplicates_sent} dup, "
            f"{stats.malformed_sent} bad), labels {stats.labels_sent}; features "
            f"{topics['features'][1]}, predictions {topics['predictions'][1]}, drift alerts "
            f"{len(self.observer.drift_alerts)}, reports {len(self.observer.reports)}"
        )

    def _drain(self) -> None:
        """Wait until every valid event has its feature vector and prediction."""
        assert self.producer and self.observer
        expected = self.producer.stats.valid_sent
        stable_since = time.monotonic()
        last: tuple[int, ...] = ()

        def pending() -> bool:
            nonlocal stable_since, last
            assert self.observer
            topics = self.observer.snapshot()
            now = (topics["features"][1], topics["predictions"][1],
                   len(self.observer.reports), len(self.observer.drift_alerts))  # fmt: skip
            if now != last:
                last, stable_since = now, time.monotonic()
            caught_up = now[0] >= expected and now[1] >= expected
            # Once caught up, give drift and performance a few seconds to report the tail.
            return not (caught_up and time.monotonic() - stable_since > 3)

        self._say("producer done; draining the pipeline")
        self._watch(pending, "draining", deadline=time.monotonic() + self.plan.drain_timeout_s)

    # -- the end ----------------------------------------------------------------------

    def _finish(self) -> claims.Summary | None:
        assert self.producer and self.observer and self.scraper
        self.producer.stop()
        self.producer.join(35)
        self.scraper.scrape_once()
        self.scraper.stop()
        self.observer.stop()
        self.observer.join(10)
        self._phase("stop_workers")
        summary = self._summarise()
        self._phase("summary")
        self._write_report(summary)
        self._print(summary)
        return summary

    def _summarise(self) -> claims.Summary:
        assert self.producer and self.observer and self.scraper
        stats = self.producer.stats
        obs = self.observer
        features_view = self.scraper.views.get("features")
        dropped = (
            total(features_view.samples, "streamml_features_duplicates_total")
            if features_view is not None and features_view.samples
            else None
        )
        alert_ends = {int(a["window_end"]) for _, a in obs.drift_alerts}
        sent = claims.Sent(
            valid_ids=frozenset(self.producer.valid_ids()),
            duplicates=stats.duplicates_sent,
            malformed=stats.malformed_sent,
            labels=stats.labels_sent,
            drift_event_time_ms=stats.drift_event_time_ms,
            drift_wall_s=stats.drift_wall_s,
            records_after_drift={e: stats.records_after_drift_until(e) for e in alert_ends},
        )
        seen = claims.Seen(
            ids={t: dict(obs.counts[t].ids) for t in ("events", "features", "predictions")},
            records={t: c.records for t, c in obs.counts.items()},
            dlq_records={t: obs.counts[t].records for t in DLQ_TOPICS},
            drift_alerts=list(obs.drift_alerts),
            reports=list(obs.reports),
            slo_alerts=list(obs.slo_alerts),
            duplicates_dropped=dropped,
            training_auc=self._training_auc(),
        )
        summary = claims.evaluate(sent, seen)
        summary.figures["dlq_reasons"] = {t: dict(c) for t, c in obs.dlq_reasons.items() if c}
        summary.figures["phases_s"] = self.phases  # "summary" is added once it is done
        summary.figures["producer"] = {
            "valid": stats.valid_sent,
            "duplicates": stats.duplicates_sent,
            "undecodable": stats.undecodable_sent,
            "invalid": stats.invalid_sent,
            "labels": stats.labels_sent,
            "labels_still_in_the_future": stats.labels_pending,
            "delivery_errors": stats.delivery_errors,
            "time_compression": self.plan.time_compression,
        }
        if self.interrupted:
            summary.claims.append(claims.Claim("run completed", False, "interrupted (Ctrl-C)"))
        if self.scenario is not None:
            outcome = self._scenario_outcome()
            summary.figures["scenario"] = outcome.as_json()
            before = None if self.scenario.name == "control" else stats.drift_wall_s
            summary.figures["scenario"]["largest_partition_gap_event_s"] = (
                scenarios.largest_partition_gap(self.partition_samples, before)
            )
            kept = [c for c in summary.claims if c.name == "run completed"]
            summary.claims = [*scenario_claims(self.scenario, outcome), *kept]
        return summary

    def _training_auc(self) -> float | None:
        path = self.plan.models_dir / "fraud-gbt" / "1" / "metadata.json"
        try:
            return float(json.loads(path.read_text())["metrics"]["auc"])
        except (OSError, ValueError, KeyError):
            return None

    def _print(self, summary: claims.Summary) -> None:
        self.console.rule("summary")
        for claim in summary.claims:
            mark = "[green]PASS[/green]" if claim.ok else "[red]FAIL[/red]"
            self.console.print(f"{mark} {claim.name}: {claim.detail}")
        figures = summary.figures
        for topic in ("events", "features", "predictions"):
            self.console.print(f"  {topic}: {figures.get(topic)}")
        self.console.print(f"  dead letters: {figures.get('dead_letters')} "
                           f"reasons {figures.get('dlq_reasons')}")  # fmt: skip
        self.console.print(f"report: {self.plan.report_path}  summary: {self.plan.summary_path}")

    def _write_report(self, summary: claims.Summary) -> None:
        assert self.producer and self.observer and self.scraper
        plan = self.plan
        stats = self.producer.stats
        origin = stats.timeline[0][1] if stats.timeline else 0
        by_version: dict[str, list[tuple[float, float]]] = {}
        for end, auc, name in claims.overall_auc(
            self.observer.reports, routes=("primary", "canary")
        ):
            by_version.setdefault(name, []).append(((end - origin) / 3_600_000, auc))
        drift_series: dict[str, list[tuple[float, float]]] = {}
        for elapsed, values in self.scraper.drift_statistics:
            for (feature, test), value in values.items():
                if test in ("psi", "ks"):
                    drift_series.setdefault(f"{feature} {test}", []).append((elapsed, value))
        ranked = _moved_most(drift_series, stats.drift_wall_s)
        throughput: dict[str, list[tuple[float, float]]] = {}
        for elapsed, rates in self.scraper.throughput:
            for name, rate in rates.items():
                throughput.setdefault(name, []).append((elapsed, rate))
        text = report.render(
            summary=summary.as_json(),
            plan={k: v for k, v in asdict(plan).items() if k != "extra_env"},
            auc_series=sorted(by_version.items()),
            drift_series=ranked,
            throughput_series=sorted(throughput.items()),
            drift_event_h=(
                (stats.drift_event_time_ms - origin) / 3_600_000
                if stats.drift_event_time_ms is not None
                else None
            ),
            drift_wall_s=stats.drift_wall_s,
            slo_threshold=0.9,
            alerts=[a for _, a in self.observer.drift_alerts],
            scenario=summary.figures.get("scenario"),
        )
        report.write(plan.report_path, text)
        summary.figures["report"] = str(plan.report_path)
        summary.claims.append(
            claims.Claim("report written", plan.report_path.exists(), str(plan.report_path))
        )
        plan.summary_path.write_text(json.dumps(summary.as_json(), indent=2, default=str))

    def _stop_all(self) -> None:
        for worker in (self.producer, self.observer, self.scraper):
            if worker is not None:
                worker.stop()
        codes = {}
        # Every service begins its shutdown at once (the summary is written already), in
        # pipeline order, upstream first; then each is waited for. One after the other,
        # the shutdowns (a last transaction, a consumer leaving its group) added seconds
        # to every run of the silent-failure suite.
        for child in self.children:
            child.terminate()
        for child in self.children:
            codes[child.name] = child.stop()
        if codes:
            self._say("services stopped: " + ", ".join(f"{k} exit {v}" for k, v in codes.items()))
        if self.broker is not None:
            self.broker.stop()
            self._say("Kafka stopped")
