"""The service entry point and its metrics, without a broker."""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.features.circuit import FailStopCircuit
from services.features.feature_set import demo_feature_set
from services.features.processor import FeaturesProcessor
from services.features.settings import FeaturesSettings
from streamml.errors import ConfigError
from streamml.processor import Record
from streamml.service import tune_gc
from streamml.settings import load_settings
from streamml.state import State
from streamml.synthetic import generate_events

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("STREAMML_FEATURES_CIRCUIT__THRESHOLD", "2", "CIRCUIT__THRESHOLD"),
        ("STREAMML_FEATURES_ALLOWED_LATENESS_MS", "-1", "ALLOWED_LATENESS_MS"),
        ("STREAMML_FEATURES_CIRCUIT__MIN_RECORDS", "5000", "larger than window"),
        ("STREAMML_FEATURES_GC_YOUNG_THRESHOLD", "-5", "GC_YOUNG_THRESHOLD"),
    ],
)
def test_bad_settings_exit_2_with_one_line(name: str, value: str, words: str) -> None:
    env = {**os.environ, name: value}
    done = subprocess.run(
        [sys.executable, "-m", "services.features"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]


def test_settings_build_the_configured_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMML_KAFKA_TOPIC_PREFIX", "p.")
    monkeypatch.setenv("STREAMML_FEATURES_ALLOWED_LATENESS_MS", "2000")
    monkeypatch.setenv("STREAMML_FEATURES_CIRCUIT__PROBE_AFTER_S", "30")
    monkeypatch.setenv("STREAMML_FEATURES_INCLUDE_NAMES", "false")
    proc = FeaturesProcessor.from_settings(load_settings(FeaturesSettings))
    assert proc.output_topic == "p.features"
    assert proc.feature_set.allowed_lateness_ms == 2000
    assert proc.feature_set.content_hash == demo_feature_set(2000).content_hash
    assert proc.circuit is not None and proc.circuit.probe_after_s == 30
    monkeypatch.setenv("STREAMML_FEATURES_CIRCUIT__ENABLED", "false")
    assert FeaturesProcessor.from_settings(load_settings(FeaturesSettings)).circuit is None
    monkeypatch.setenv("STREAMML_FEATURES_DEDUP_RETENTION_S", "1")
    with pytest.raises(ConfigError, match="DEDUP_RETENTION_S"):
        load_settings(FeaturesSettings)


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_metrics_count_duplicates_failures_age_and_trips() -> None:
    circuit = FailStopCircuit(window=10, threshold=0.5, min_records=3)
    proc = FeaturesProcessor(
        feature_set=demo_feature_set(), output_topic="f", circuit=circuit, clock=lambda: 2e9
    )
    state = State(proc.stores)
    for store in state.stores:
        store.assign(3)
    events = [e for e, _ in generate_events(3, seed=4)]
    bad = copy.deepcopy(events[2])
    bad["payload"]["channel"] = "fax"

    def rec(i: int, event: dict, headers: tuple = ()) -> Record:
        return Record("e", 3, i, 0, None, event, headers, "Event")

    before = {
        "live": _sample("streamml_features_duplicates_total", {"source": "live"}),
        "replay": _sample("streamml_features_duplicates_total", {"source": "replay"}),
        "rule": _sample(
            "streamml_features_validation_failures_total",
            {"reason": "validation.category", "field": "payload.channel"},
        ),
        "age": _sample("streamml_features_feature_age_seconds_count"),
        "trips": _sample("streamml_features_circuit_trips_total"),
    }
    proc.process(
        [rec(0, events[0]), rec(1, events[0]), rec(2, events[0], (("replay.id", b"x"),)),
         rec(3, events[1]), rec(4, bad)],
        state,
    )  # fmt: skip
    assert _sample("streamml_features_duplicates_total", {"source": "live"}) == before["live"] + 1
    assert (
        _sample("streamml_features_duplicates_total", {"source": "replay"}) == before["replay"] + 1
    )
    assert (
        _sample(
            "streamml_features_validation_failures_total",
            {"reason": "validation.category", "field": "payload.channel"},
        )
        == before["rule"] + 1
    )
    assert _sample("streamml_features_feature_age_seconds_count") == before["age"] + 2
    assert _sample("streamml_features_seconds_since_last_event", {"partition": "3"}) >= 0.0
    result = proc.process([rec(5 + i, bad) for i in range(5)], state)
    assert result.halt is not None
    assert _sample("streamml_features_circuit_trips_total") == before["trips"] + 1
    assert _sample("streamml_features_circuit_state") == 1.0
    proc.on_resume(probe=True)
    assert _sample("streamml_features_circuit_state") == 2.0
    proc.on_resume(probe=False)
    assert _sample("streamml_features_circuit_state") == 0.0


def test_tune_gc_sets_the_young_threshold_only() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(12_345)
        assert gc.get_threshold() == (12_345, *before[1:])
        tune_gc(0)
        assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        gc.set_threshold(*before)
