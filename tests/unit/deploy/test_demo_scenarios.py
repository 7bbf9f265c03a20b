"""The failure-injection scenarios' pure parts: what each injects, how alerts are read
from the topics and metrics, and how a run is scored (detection, times, false alarms)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.silent_failures import aggregate
from services.demo import scenarios
from services.demo.plan import DemoPlan
from streamml.synthetic import generate_events


def events(n: int = 400) -> list[dict[str, Any]]:
    return [event for event, _ in generate_events(n, seed=3)]


def test_units_recoded_and_stuck_change_only_their_field() -> None:
    for event in events():
        cents = scenarios.get("units").apply(event, 2)
        assert cents is not None
        assert cents["payload"]["amount"] == pytest.approx(event["payload"]["amount"] * 100)
        recoded = scenarios.get("recoded-category").apply(event, 2)
        assert recoded is not None
        country = event["payload"]["country"]
        assert recoded["payload"]["country"] == scenarios.RECODED_COUNTRIES.get(country, country)
        stuck = scenarios.get("stuck-field").apply(event, 2)
        assert stuck is not None
        before = event["payload"]["device_age_days"]
        assert stuck["payload"]["device_age_days"] == (None if before is None else 0)
        for changed in (cents, recoded, stuck):
            rest = {k: v for k, v in changed["payload"].items()
                    if k not in ("amount", "country", "device_age_days")}  # fmt: skip
            assert rest == {k: event["payload"][k] for k in rest}
    assert any(scenarios.get("recoded-category").apply(e, 2) != e for e in events())


def test_stale_partition_drops_exactly_one_partitions_events() -> None:
    stale = scenarios.get("stale-partition")
    kept = [e for e in events() if stale.apply(e, 2) is not None]
    dropped = [e for e in events() if stale.apply(e, 2) is None]
    assert kept and dropped
    assert {scenarios.partition_of(e["entity_id"].encode(), 2) for e in dropped} == {0}
    assert {scenarios.partition_of(e["entity_id"].encode(), 2) for e in kept} == {1}
    assert all(stale.apply(e, 1) is not None for e in events())  # one partition: no-op


def test_every_scenario_is_known_to_the_plan_and_unknown_ones_are_refused() -> None:
    assert len(scenarios.SCENARIOS) == 11 and "control" in scenarios.SCENARIOS
    assert DemoPlan(scenario="labels-stop").check() is None
    problem = DemoPlan(scenario="nope").check()
    assert problem is not None and problem.startswith("--scenario must be one of control")
    with pytest.raises(ValueError, match="--scenario must be one of"):
        scenarios.get("nope")


def test_a_label_based_scenario_runs_until_its_labels_can_have_come() -> None:
    concept = scenarios.get("concept-drift")
    assert concept.event_s_after == scenarios.LABEL_WAIT_EVENT_S and not concept.before_labels
    duration, inject_at, monitor_after = scenarios.run_length(
        concept, duration_s=45, inject_at=0.5, monitor_after=0.15, compression=40
    )
    # the injection and the drift service's start stay at the same wall second ...
    assert duration * inject_at == pytest.approx(22.5)
    assert duration * monitor_after == pytest.approx(6.75)
    # ... and the run goes on for the label wait after it
    assert (duration - 22.5) * 40 == pytest.approx(scenarios.LABEL_WAIT_EVENT_S)
    plan = DemoPlan(duration_s=duration, drift_fraction=inject_at,
                    monitor_after_fraction=monitor_after, scenario="concept-drift")  # fmt: skip
    assert plan.check() is None
    # too short a run is refused with what to change, not run blind
    short = DemoPlan(duration_s=45, drift_fraction=0.5, scenario="concept-drift").check()
    assert short is not None and "60 minutes of event time" in short and "--duration" in short
    for name in ("units", "worse-model", "labels-stop", "control"):
        unchanged = scenarios.run_length(
            scenarios.get(name), duration_s=45, inject_at=0.5, monitor_after=0.15, compression=40
        )
        assert unchanged == (45, 0.5, 0.15)


def test_alerts_are_read_generically_from_topics_and_metrics() -> None:
    drift = scenarios.drift_alerts([
        (5.0, {"severity": "alert", "state": "open", "detector": "psi", "feature": "amount",
               "statistic": 0.4}),
        (6.0, {"severity": "warn", "state": "open", "detector": "adwin", "feature": "x"}),
        (7.0, {"severity": "alert", "state": "resolved", "detector": "psi", "feature": "y"}),
        (8.0, {"severity": "alert", "state": "open", "detector": "stale_partition",
               "feature": "partition 0", "statistic": 2, "signal": "freshness"}),
    ])  # fmt: skip
    assert [(a.signal, a.wall_s) for a in drift] == [("drift", 5.0), ("freshness", 8.0)]
    slo = scenarios.slo_alerts([
        (3.0, {"state": "open", "kind": "slo", "metric": "roc_auc", "value": 0.8}),
        (4.0, {"state": "open", "kind": "estimated", "metric": "roc_auc", "value": 0.8}),
        (5.0, {"state": "resolved", "kind": "slo", "metric": "roc_auc", "value": 0.95}),
    ])  # fmt: skip
    assert [a.signal for a in slo] == ["slo", "estimated"]
    # 3 % retries never alert; a 30 % storm does, within one window of scrapes
    steady = [(float(t), 0.03 * 200 * t, 200.0 * t) for t in range(0, 30)]
    assert scenarios.duplicate_alerts(steady) == []
    storm = steady + [(float(t), 17.4 + 60 * (t - 29), 5800 + 260.0 * (t - 29))
                      for t in range(30, 40)]  # fmt: skip
    fired = scenarios.duplicate_alerts(storm)
    assert fired and 30 < fired[0].wall_s <= 30 + scenarios.DUPLICATE_WINDOW_S


def test_the_model_cache_key_and_primary_name_match_the_training_module() -> None:
    # The demo finds the training sources without importing them (a second of CPU per run).
    import hashlib
    from pathlib import Path

    from services.demo import models
    from services.scorer import calibration, training
    from streamml import synthetic

    digest = hashlib.sha256()
    for module in (training, calibration, synthetic):
        digest.update(Path(str(module.__file__)).read_bytes())
    assert models._source_digest() == digest.hexdigest()
    assert models.PRIMARY_NAME == training.PRIMARY_NAME


def test_a_partition_stalled_behind_its_topic_with_nothing_unread_is_a_freshness_alert() -> None:
    def scrape(t: float, p0: float, lag0: float = 1.0) -> tuple[float, Any]:
        return (
            t,
            {
                ("predictions", 0): (p0, lag0),
                ("predictions", 1): (1000 + 40 * t, 0.0),
                ("labels", 0): (900 + 40 * t, 0.0),
                ("labels", 1): (900 + 40 * t, 0.0),
            },
        )

    # In step, or behind by a batch (a few scrapes, 2 s of wall time): no alert.
    assert scenarios.partition_stall_alerts([scrape(t, 1000 + 40 * t) for t in range(60)]) == []
    jitter = [scrape(t, 1000 + 40 * t - (100 if t % 7 == 0 else 0)) for t in range(60)]
    assert scenarios.partition_stall_alerts(jitter) == []
    # Partition 0 stops at t = 10: over the limit once 3 s on, alert after the 2-s hold.
    stopped = [scrape(t / 2, 1000 + 40 * min(t / 2, 10.0)) for t in range(60)]
    fired = scenarios.partition_stall_alerts(stopped)
    assert [(a.signal, a.source) for a in fired] == [("freshness", "metrics")]
    limit_s = 10 + scenarios.PARTITION_STALL_EVENT_S / 40
    assert limit_s + scenarios.PARTITION_STALL_FOR_S <= fired[0].wall_s <= limit_s + 3
    assert "predictions partition 0" in fired[0].detail
    # The same gap with records still to read on the partition (a backlog read unevenly):
    # it is behind, not stopped.
    unread = [scrape(t / 2, 1000 + 40 * min(t / 2, 10.0), lag0=500) for t in range(60)]
    assert scenarios.partition_stall_alerts(unread) == []


def test_outcome_splits_false_alarms_from_the_detection_and_times_it_in_both_clocks() -> None:
    timeline = [(0.0, 0), (10.0, 400_000), (20.0, 800_000)]
    alerts = [
        scenarios.Alert("drift", 4.0, "drift.alerts", "early"),
        scenarios.Alert("freshness", 15.0, "drift.alerts", "partition 0"),
        scenarios.Alert("slo", 18.0, "performance.alerts", "auc"),
    ]
    run = scenarios.outcome("stale-partition", alerts, injection_wall_s=10.0,
                            injection_event_ms=400_000, timeline=timeline)  # fmt: skip
    assert run.detected and run.first is not None and run.first.signal == "freshness"
    assert (run.first_wall_s, run.first_event_s) == (5.0, 200.0)
    assert [a.detail for a in run.false_alarms] == ["early"]
    assert run.as_json()["signals_after"] == ["freshness", "slo"]
    control = scenarios.outcome("control", alerts, injection_wall_s=10.0,
                                injection_event_ms=400_000, timeline=timeline)  # fmt: skip
    assert not control.detected and len(control.false_alarms) == 3
    quiet = scenarios.outcome("units", [], injection_wall_s=10.0, injection_event_ms=1,
                              timeline=timeline)  # fmt: skip
    assert not quiet.detected and quiet.first_wall_s is None


def test_the_suite_scores_detection_rate_false_alarms_and_the_time_targets() -> None:
    def run(name: str, seed: int, detected: bool, wall: float | None = None,
            event: float | None = None, alarms: int = 0) -> dict[str, Any]:  # fmt: skip
        return {"scenario": name, "seed": seed, "detected": detected,
                "first_signal": "drift" if detected else None, "time_to_alert_wall_s": wall,
                "time_to_alert_event_s": event, "false_alarms": alarms}  # fmt: skip

    runs = [
        run("control", 1, False), run("control", 2, False, alarms=1),
        run("units", 1, True, 10.0, 400.0), run("units", 2, True, 20.0, 100.0),
        run("concept-drift", 1, False), run("concept-drift", 2, True, 90.0, 3600.0),
    ]  # fmt: skip
    figures = aggregate(runs)
    assert figures["detection_rate"] == 0.75 and figures["failure_runs"] == 4
    assert figures["control_false_alarms"] == 1
    assert figures["scenarios"]["units"]["median_time_to_alert_wall_s"] == 15.0
    assert figures["scenarios"]["units"]["median_time_to_alert_event_s"] == 250.0
    targets = figures["targets"]
    assert not targets["detection_rate_at_least_0.95"] and not targets["zero_alerts_in_control"]
    # concept drift cannot be seen before labels: it is not held to the time target
    assert targets["median_alert_under_5min_event_and_60s_wall"]
