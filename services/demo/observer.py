"""What the demo watches: the services' /metrics endpoints and the topics they write.

:class:`MetricsScraper` reads every service's Prometheus text once a second (parsed with
``prometheus_client.parser``) and keeps the latest samples plus a short history of the
series the report plots. :class:`TopicObserver` reads the audited topics (events, features,
predictions, the dead-letter topics) and the result topics (drift alerts, performance
reports, SLO alerts) from the beginning, ``read_committed``, as any downstream consumer
would, and counts records and distinct event ids per topic.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.demo.plan import AUDIT_TOPICS, DLQ_TOPICS, RESULT_TOPICS, DemoPlan
from streamml.deadletter import H_ERROR_CLASS
from streamml.errors import DecodeError

log = logging.getLogger(__name__)

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
Samples = dict[SampleKey, float]


def parse_metrics(text: str) -> Samples:
    """Prometheus text -> ``{(sample name, sorted labels): value}``."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def total(samples: Mapping[SampleKey, float], name: str, **match: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``match``."""
    result = 0.0
    for (sample_name, labels), value in samples.items():
        if sample_name != name or math.isnan(value):  # NaN never adds up
            continue
        label_map = dict(labels)
        if all(label_map.get(k) == v for k, v in match.items()):
            result += value
    return result


def by_label(samples: Mapping[SampleKey, float], name: str, label: str) -> dict[str, float]:
    """``name`` summed per value of ``label``."""
    result: dict[str, float] = {}
    for (sample_name, labels), value in samples.items():
        if sample_name == name:
            key = dict(labels).get(label, "")
            result[key] = result.get(key, 0.0) + value
    return result


@dataclass
class ServiceView:
    """The latest scrape of one service and the rate derived from the one before."""

    up: bool = False
    samples: Samples = field(default_factory=dict)
    records_in_per_s: float = 0.0
    scraped_at: float = 0.0
    note: str = ""
    """Shown instead of "down" while the service is not up (e.g. "joins at 27s")."""


class MetricsScraper(threading.Thread):
    """Scrapes ``http://127.0.0.1:<port>/metrics`` of every service every ``interval_s``."""

    def __init__(self, ports: Mapping[str, int], interval_s: float = 1.0) -> None:
        super().__init__(name="demo-scraper", daemon=True)
        self.ports = dict(ports)
        self.interval_s = interval_s
        self.views: dict[str, ServiceView] = {name: ServiceView() for name in ports}
        # (wall seconds since start, service -> records in/s) and drift statistics.
        self.throughput: list[tuple[float, dict[str, float]]] = []
        self.drift_statistics: list[tuple[float, dict[tuple[str, str], float]]] = []
        self.started = time.monotonic()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def scrape_once(self) -> None:
        now = time.monotonic()
        rates: dict[str, float] = {}
        for name, port in self.ports.items():
            view = self.views[name]
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/metrics", timeout=2
                ) as response:
                    samples = parse_metrics(response.read().decode())
            except (OSError, urllib.error.URLError, ValueError):
                view.up = False
                continue
            view.note = ""
            before = total(view.samples, "streamml_records_in_total")
            after = total(samples, "streamml_records_in_total")
            if view.scraped_at:
                view.records_in_per_s = max(0.0, after - before) / max(now - view.scraped_at, 1e-3)
            view.up, view.samples, view.scraped_at = True, samples, now
            rates[name] = view.records_in_per_s
        elapsed = now - self.started
        self.throughput.append((elapsed, rates))
        drift = self.views.get("drift")
        if drift is not None and drift.up:
            stats = {
                (dict(labels).get("feature", ""), dict(labels).get("test", "")): value
                for (name, labels), value in drift.samples.items()
                if name == "streamml_drift_statistic" and not math.isnan(value)
            }
            if stats:
                self.drift_statistics.append((elapsed, stats))

    def run(self) -> None:
        while not self._halt.is_set():
            self.scrape_once()
            self._halt.wait(self.interval_s)


@dataclass
class TopicCounts:
    """Records and distinct event ids read from one topic."""

    records: int = 0
    undecodable: int = 0
    ids: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    """Records beyond the first of their id, counted as they come: summing ``ids`` at each
    snapshot took the observer's lock for a time that grew with the run (5 M ids in an
    hour-long soak), delaying the records read meanwhile."""

    @property
    def distinct(self) -> int:
        return len(self.ids)

    def add(self, event_id: str) -> None:
        seen = self.ids[event_id] + 1
        self.ids[event_id] = seen
        if seen > 1:
            self.duplicates += 1


_SCHEMA = {
    "events": "Event",
    "features": "FeatureVector",
    "predictions": "Prediction",
    "drift.alerts": "DriftAlert",
    "performance": "PerformanceReport",
    "performance.alerts": "SloAlert",
}


def read_from_beginning(
    kafka_config: Mapping[str, Any], group: str, topics: Collection[str]
) -> Any:
    """A ``read_committed`` consumer, committing nothing, assigned every partition of
    ``topics`` (physical names; those not on the broker are skipped) from the beginning."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            **kafka_config,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(timeout=30)
        consumer.assign(
            [
                TopicPartition(topic, partition, OFFSET_BEGINNING)
                for topic in topics
                if topic in metadata.topics
                for partition in metadata.topics[topic].partitions
            ]
        )
    except BaseException:
        consumer.close()
        raise
    return consumer


class TopicObserver(threading.Thread):
    """Reads the audited and result topics from the beginning, as a downstream consumer."""

    def __init__(
        self, plan: DemoPlan, kafka_config: dict[str, Any], codec: Any, *, results: bool = True
    ) -> None:
        """``results=False``: the audited topics and their dead letters only, not the reports
        and alerts (the soak's audit: an hour of them is ~200,000 decoded dicts)."""
        super().__init__(name="demo-observer", daemon=True)
        self.plan = plan
        self._codec = codec
        self._config = kafka_config
        self._group = f"{plan.topic_prefix}demo-observer-{uuid.uuid4().hex[:6]}"
        self.started = time.monotonic()
        self.counts: dict[str, TopicCounts] = {
            name: TopicCounts() for name in (*AUDIT_TOPICS, *DLQ_TOPICS)
        }
        self.dlq_reasons: dict[str, Counter[str]] = {name: Counter() for name in DLQ_TOPICS}
        # (wall seconds since start, decoded record)
        self.drift_alerts: list[tuple[float, dict[str, Any]]] = []
        self.reports: list[tuple[float, dict[str, Any]]] = []
        self.slo_alerts: list[tuple[float, dict[str, Any]]] = []
        # (wall seconds since start, dead-letter topic, error class) of every dead letter
        self.dead_letters: list[tuple[float, str, str]] = []
        self.last_record_at = time.monotonic()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        read = (*AUDIT_TOPICS, *DLQ_TOPICS, *(RESULT_TOPICS if results else ()))
        self._by_physical = {plan.topic(n): n for n in read}

    def stop(self) -> None:
        self._halt.set()

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        """``{topic: (records, distinct ids, duplicates)}``."""
        with self._lock:
            return {n: (c.records, c.distinct, c.duplicates) for n, c in self.counts.items()}

    def run(self) -> None:
        try:
            consumer = read_from_beginning(self._config, self._group, self._by_physical)
        except Exception:  # a broken observer must not hang the demo; the summary says so
            log.exception("topic observer could not start")
            return
        try:
            while not self._halt.is_set():
                messages = consumer.consume(num_messages=1000, timeout=0.5)
                with self._lock:
                    for message in messages:
                        if message.error() is None:
                            self._take(message)
        except Exception:  # a broken observer must not hang the demo; the summary says so
            log.exception("topic observer stopped")
        finally:
            consumer.close()

    def _take(self, message: Any) -> None:
        logical = self._by_physical.get(message.topic())
        if logical is None:
            return
        self.last_record_at = time.monotonic()
        value = message.value() or b""
        if logical in self.counts:
            counts = self.counts[logical]
            counts.records += 1
            if logical in DLQ_TOPICS:
                reason = dict(message.headers() or []).get(H_ERROR_CLASS) or b"?"
                self.dlq_reasons[logical][reason.decode(errors="replace")] += 1
                self.dead_letters.append(
                    (time.monotonic() - self.started, logical, reason.decode(errors="replace"))
                )
                return
            try:
                record = self._codec.decode(value, _SCHEMA[logical], topic=message.topic())
            except DecodeError:
                counts.undecodable += 1
                return
            counts.add(str(record["event_id"]))
            return
        try:
            record = self._codec.decode(value, _SCHEMA[logical], topic=message.topic())
        except DecodeError:
            return
        seen = (time.monotonic() - self.started, record)
        if logical == "drift.alerts":
            self.drift_alerts.append(seen)
        elif logical == "performance":
            self.reports.append(seen)
        else:
            self.slo_alerts.append(seen)
