"""The demo's summary checks and report, on hand-made inputs (no broker)."""

from __future__ import annotations

from typing import Any

from services.demo import claims, report
from services.demo.observer import parse_metrics, total
from services.demo.plan import DemoPlan, service_env
from streamml.synthetic import DEFAULT_START_MS

DRIFT = 1_000_000


def _alert(feature: str, state: str, end: int, severity: str = "alert") -> dict[str, Any]:
    return {"feature": feature, "state": state, "window_end": end, "window_start": end - 1,
            "severity": severity,
            "detector": "psi", "statistic": 0.4, "threshold": 0.25}  # fmt: skip


def _report(end: int, auc: float | None, **extra: Any) -> dict[str, Any]:
    return {"model_name": "fraud-gbt", "model_version": "1", "route": "primary",
            "window": "sliding", "segment_field": None, "window_end": end, "roc_auc": auc,
            **extra}  # fmt: skip


def _sent(ids: set[str], **extra: Any) -> claims.Sent:
    values: dict[str, Any] = {"valid_ids": frozenset(ids), "duplicates": 2, "malformed": 1,
                              "labels": 3, "drift_event_time_ms": DRIFT, "drift_wall_s": 10.0,
                              "records_after_drift": {DRIFT + 60_000: 321}}  # fmt: skip
    values.update(extra)
    return claims.Sent(**values)


def _seen(features: dict[str, int], predictions: dict[str, int], **extra: Any) -> claims.Seen:
    values: dict[str, Any] = {
        "ids": {"events": dict(features), "features": features, "predictions": predictions},
        "records": {"features": sum(features.values())},
        "dlq_records": {"events.dlq": 1, "features.dlq": 0},
        "drift_alerts": [(12.5, _alert("amount_log1p", "open", DRIFT + 60_000))],
        "reports": [(1.0, _report(DRIFT - 1, 0.99)), (15.0, _report(DRIFT + 5, 0.80))],
        "slo_alerts": [],
    }
    values.update(extra)
    return claims.Seen(**values)


def _by_name(summary: claims.Summary) -> dict[str, claims.Claim]:
    return {claim.name: claim for claim in summary.claims}


def test_every_claim_holds_for_a_clean_run() -> None:
    summary = claims.evaluate(_sent({"a", "b"}), _seen({"a": 1, "b": 1}, {"a": 1, "b": 1}))
    assert summary.ok, summary.claims
    detection = summary.figures["drift_detection"]
    assert detection["records_after_change"] == 321
    assert detection["wall_s_after_change"] == 2.5


def test_a_missing_prediction_is_a_loss() -> None:
    summary = claims.evaluate(_sent({"a", "b"}), _seen({"a": 1, "b": 1}, {"a": 1}))
    assert not _by_name(summary)["no event lost"].ok
    assert summary.figures["predictions"]["missing"] == 1
    assert not summary.ok


def test_a_second_copy_is_a_duplicate() -> None:
    summary = claims.evaluate(_sent({"a"}), _seen({"a": 2}, {"a": 1}))
    assert not _by_name(summary)["no event duplicated"].ok
    assert _by_name(summary)["no event lost"].ok


def test_dead_letters_must_match_the_malformed_records() -> None:
    seen = _seen({"a": 1}, {"a": 1}, dlq_records={"events.dlq": 0, "features.dlq": 0})
    assert not _by_name(claims.evaluate(_sent({"a"}), seen))["malformed records dead-lettered"].ok


def test_an_episode_open_since_before_the_drift_is_not_a_detection() -> None:
    alerts = [
        (1.0, _alert("amount_log1p", "open", DRIFT - 10)),
        (12.0, _alert("amount_log1p", "updated", DRIFT + 60_000)),
        (13.0, _alert("country", "open", DRIFT + 60_000, severity="warn")),
    ]
    assert claims.first_detection(alerts, DRIFT) is None
    summary = claims.evaluate(_sent({"a"}), _seen({"a": 1}, {"a": 1}, drift_alerts=alerts))
    assert not _by_name(summary)["injected drift detected"].ok
    resolved = [alerts[0], (5.0, _alert("amount_log1p", "resolved", DRIFT - 5)), alerts[1]]
    found = claims.first_detection(resolved, DRIFT)
    assert found is not None and found[0] == 12.0


def test_no_quality_drop_fails_and_an_slo_alert_counts() -> None:
    flat = [(1.0, _report(DRIFT - 1, 0.99)), (15.0, _report(DRIFT + 5, 0.97))]
    summary = claims.evaluate(_sent({"a"}), _seen({"a": 1}, {"a": 1}, reports=flat))
    assert not _by_name(summary)["quality drop seen"].ok
    slo = [(16.0, {"state": "open", "window_end": DRIFT + 10})]
    summary = claims.evaluate(_sent({"a"}), _seen({"a": 1}, {"a": 1}, reports=flat,
                                                   slo_alerts=slo))  # fmt: skip
    assert _by_name(summary)["quality drop seen"].ok


def test_segmented_and_cumulative_reports_are_not_the_live_auc() -> None:
    reports = [
        (1.0, _report(5, 0.9)),
        (1.0, _report(6, 0.1, segment_field="country")),
        (1.0, {**_report(7, 0.2), "window": "cumulative"}),
        (1.0, _report(8, None)),
    ]
    assert claims.overall_auc(reports) == [(5, 0.9, "fraud-gbt/1")]


def test_no_drift_injected_fails_the_drift_claims() -> None:
    summary = claims.evaluate(
        _sent({"a"}, drift_event_time_ms=None, drift_wall_s=None), _seen({"a": 1}, {"a": 1})
    )
    assert not _by_name(summary)["injected drift detected"].ok
    assert not _by_name(summary)["quality drop seen"].ok


def test_report_is_self_contained_html_with_the_drift_marked() -> None:
    text = report.render(
        summary={"ok": True, "claims": [{"name": "x", "ok": True, "detail": "<d>"}],
                 "figures": {"events": {"records": 3}}},
        plan={"rate": 1},
        auc_series=[("fraud-gbt/1", [(0.0, 0.99), (1.0, 0.7)])],
        drift_series=[("amount psi", [(0.0, 0.01), (5.0, 0.4)])],
        throughput_series=[],
        drift_event_h=0.5,
        drift_wall_s=2.0,
        slo_threshold=0.9,
        alerts=[_alert("amount_log1p", "open", DRIFT)],
    )  # fmt: skip
    assert text.count("<svg") == 2 and "drift injected" in text
    assert (
        "&lt;d&gt;" in text
        and "<script" not in text
        and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )


def test_metrics_text_is_parsed_and_summed_by_label() -> None:
    samples = parse_metrics(
        "# TYPE streamml_records_in_total counter\n"
        'streamml_records_in_total{service="features",topic="a"} 3\n'
        'streamml_records_in_total{service="features",topic="b"} 4\n'
        "# TYPE streamml_drift_open_episodes gauge\nstreamml_drift_open_episodes NaN\n"
    )
    assert total(samples, "streamml_records_in_total") == 7
    assert total(samples, "streamml_records_in_total", topic="b") == 4
    assert total(samples, "streamml_drift_open_episodes") == 0


def test_service_env_points_every_service_at_the_demo_and_binds_locally(tmp_path: Any) -> None:
    plan = DemoPlan(run_dir=tmp_path, topic_prefix="demo1.", partitions=3)
    for name in ("features", "scorer", "drift", "performance"):
        env = service_env(plan, name, bootstrap="h:1", http_port=1234, reference=tmp_path)
        prefix = f"STREAMML_{name.upper()}_"
        assert env["STREAMML_KAFKA_BOOTSTRAP_SERVERS"] == "h:1"
        assert env["STREAMML_KAFKA_TOPIC_PREFIX"] == "demo1."
        assert env[f"{prefix}HTTP__HOST"] == "127.0.0.1"
        assert env[f"{prefix}HTTP__PORT"] == "1234"
    drift = service_env(plan, "drift", bootstrap="h:1", http_port=1, reference=tmp_path)
    assert drift["STREAMML_DRIFT_SOURCE_PARTITIONS"] == "3"


def test_plan_checks_its_bounds() -> None:
    assert DemoPlan().check() is None
    assert "duration" in (DemoPlan(duration_s=1).check() or "")
    assert "malformed" in (DemoPlan(malformed_share=0.5).check() or "")
    assert "monitor-after" in (DemoPlan(monitor_after_fraction=0.4).check() or "")
    assert DemoPlan(monitor_after_fraction=0).monitor_from_ms == 0
    assert DemoPlan(duration_s=100).warmup_s == 15
    # 15 s of traffic at x40 is 10 minutes of event time from the generator's start.
    assert DemoPlan(duration_s=100).monitor_from_ms == DEFAULT_START_MS + 600_000
    assert DemoPlan(rate=200, event_rate_per_s=5).time_compression == 40


def test_service_env_is_valid_for_every_service_settings_class(
    tmp_path: Any, monkeypatch: Any
) -> None:
    from services.drift.settings import DriftSettings
    from services.features.settings import FeaturesSettings
    from services.performance.settings import PerformanceSettings
    from services.scorer.settings import ScorerSettings
    from streamml.settings import load_settings

    plan = DemoPlan(run_dir=tmp_path)
    classes = {"features": FeaturesSettings, "scorer": ScorerSettings,
               "drift": DriftSettings, "performance": PerformanceSettings}  # fmt: skip
    for name, cls in classes.items():
        env = service_env(plan, name, bootstrap="127.0.0.1:1", http_port=1, reference=tmp_path)
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            settings = load_settings(cls)  # type: ignore[type-var]
        assert settings.http.port == 1
    drift_env = service_env(plan, "drift", bootstrap="127.0.0.1:1", http_port=1,
                            reference=tmp_path)  # fmt: skip
    with monkeypatch.context() as patch:
        for key, value in drift_env.items():
            patch.setenv(key, value)
        drift = load_settings(DriftSettings)
    assert drift.monitor_from_ms == plan.monitor_from_ms > 0  # the cold start is not monitored
    assert drift.window_ms == 180_000


def test_windows_holding_only_drifted_predictions_decide_the_quality_claim() -> None:
    reports = [
        (1.0, _report(DRIFT - 1, 0.99)),
        (2.0, _report(DRIFT + 5, 0.99, window_start=DRIFT - 100)),  # mostly pre-drift samples
        (3.0, _report(DRIFT + 9, 0.80, window_start=DRIFT + 1)),
    ]
    summary = claims.evaluate(_sent({"a"}), _seen({"a": 1}, {"a": 1}, reports=reports))
    assert _by_name(summary)["quality drop seen"].ok
    assert summary.figures["quality"]["auc_after_median"] == 0.80
    mixed_only = reports[:2]
    summary = claims.evaluate(_sent({"a"}), _seen({"a": 1}, {"a": 1}, reports=mixed_only))
    assert not _by_name(summary)["quality drop seen"].ok


def test_live_view_renders_every_service_figure() -> None:
    from rich.console import Console

    from services.demo import view
    from services.demo.observer import ServiceView
    from services.demo.producer import ProducerStats

    metrics = parse_metrics(
        'streamml_ready{service="x"} 1\n'
        'streamml_consumer_lag{service="x",topic="t",partition="0"} 7\n'
        'streamml_dead_letters_total{service="x",topic="t",reason="decode"} 2\n'
        'streamml_features_duplicates_total{source="live"} 5\n'
        'streamml_scorer_predictions_total{route="primary"} 90\n'
        'streamml_scorer_predictions_total{route="fallback"} 10\n'
        "streamml_drift_open_episodes 3\n"
        'streamml_performance_quality{model="m",version="1",route="primary",window="sliding",'
        'segment_field="",segment_value="",metric="roc_auc"} 0.875\n'
        'streamml_performance_window_records{model="m",version="1",route="primary",'
        'window="cumulative",segment_field="",segment_value="",kind="labeled"} 40\n'
        'streamml_performance_window_records{model="m",version="1",route="primary",'
        'window="cumulative",segment_field="",segment_value="",kind="predictions"} 80\n'
    )
    views = {name: ServiceView(up=True, samples=metrics, records_in_per_s=12.0)
             for name in ("features", "scorer", "drift", "performance")}  # fmt: skip
    views["drift"] = ServiceView(up=False)
    console = Console(width=160, record=True)
    console.print(view.render(views=views, stats=ProducerStats(), elapsed_s=3, duration_s=10,
                              compression=40, topics={"events": (3, 3, 0)},
                              alerts=[_alert("amount_log1p", "open", 1)],
                              phase="producing"))  # fmt: skip
    text = console.export_text()
    for expected in ("duplicates dropped 5", "fallback 10%", "primary 90%", "down",
                     "0.875", "50% (40/80)", "amount_log1p (psi 0.4)", "x40",
                     "events 3 (3 ids, 0 copies)"):  # fmt: skip
        assert expected in text, expected


def test_an_alert_on_a_feature_the_drift_does_not_change_is_no_detection() -> None:
    alerts = [(12.0, _alert("amount_1h_count", "open", DRIFT + 1)),
              (13.0, _alert("history_count_log1p", "open", DRIFT + 2))]  # fmt: skip
    assert claims.first_detection(alerts, DRIFT) is None
    straddling = {**_alert("amount_bucket", "open", DRIFT + 5), "window_start": DRIFT - 100}
    assert claims.first_detection([(11.0, straddling)], DRIFT) is None
    alerts.append((14.0, _alert("country#3", "open", DRIFT + 3)))
    found = claims.first_detection(alerts, DRIFT)
    assert found is not None and found[1]["feature"] == "country#3"
    summary = claims.evaluate(_sent({"a"}), _seen({"a": 1}, {"a": 1}, drift_alerts=alerts))
    assert summary.figures["drift_detection"]["unchanged_features_alerting_after"] == [
        "amount_1h_count", "history_count_log1p"
    ]  # fmt: skip
    assert [f for f in ("amount_24h_sum", "score", "amount_bucket", "amount_10m_count",
            "hour_of_day_sin") if claims.changed_by_drift(f)] == [
        "amount_24h_sum", "score", "amount_bucket"
    ]  # fmt: skip


def test_report_plots_the_drifted_features_that_moved_at_the_drift() -> None:
    from services.demo.orchestrator import _moved_most

    series = {
        "amount_bucket psi": [(1.0, 0.01), (9.0, 0.6)],
        "country psi": [(1.0, 0.01), (9.0, 0.2)],
        "amount_1h_count psi": [(1.0, 3.0), (9.0, 3.0)],  # warm-up, not drift
        "hour_of_day_sin psi": [(1.0, 8.0), (9.0, 8.0)],
        "amount_clipped psi": [(1.0, 0.5), (9.0, 0.5)],  # high but unmoved
    }
    ranked = [name for name, _ in _moved_most(series, split=5.0, keep=2)]
    assert ranked == ["amount_bucket psi", "country psi"]


def test_canary_reports_are_plotted_apart_and_kept_out_of_the_quality_claim() -> None:
    reports = [(1.0, _report(5, 0.9)), (1.0, {**_report(6, 0.5), "route": "canary",
                                              "model_version": "2"})]  # fmt: skip
    assert claims.overall_auc(reports) == [(5, 0.9, "fraud-gbt/1")]
    assert claims.overall_auc(reports, routes=("primary", "canary")) == [
        (5, 0.9, "fraud-gbt/1"), (6, 0.5, "fraud-gbt/2 (canary)")
    ]  # fmt: skip


def test_an_episode_opened_before_the_drift_fails_the_quiet_claim() -> None:
    clean = claims.evaluate(_sent({"a"}), _seen({"a": 1}, {"a": 1}))
    assert _by_name(clean)["no drift episode before the injected drift"].ok
    early = [(1.0, _alert("country#18", "open", DRIFT - 10, severity="warn")),
             (12.5, _alert("amount_log1p", "open", DRIFT + 60_000))]  # fmt: skip
    summary = claims.evaluate(_sent({"a"}), _seen({"a": 1}, {"a": 1}, drift_alerts=early))
    quiet = _by_name(summary)["no drift episode before the injected drift"]
    assert not quiet.ok and "country#18" in quiet.detail
    assert _by_name(summary)["injected drift detected"].ok  # a detection does not excuse it
    assert not summary.ok


def test_topic_counts_keep_duplicates_as_records_come() -> None:
    from services.demo.observer import TopicCounts

    counts = TopicCounts()
    for event_id in ["a", "b", "a", "c", "a", "b"]:
        counts.add(event_id)
    assert (counts.distinct, counts.duplicates) == (3, 3)
    assert counts.duplicates == sum(n - 1 for n in counts.ids.values())


def test_a_restarted_service_child_gets_sigterm_again_when_stopped(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """The soak restarts each service once; the final stop must signal the new process
    too (it was killed after 20 s instead, as the flag of the first stop stayed set)."""
    import signal as signals

    from services.demo import orchestrator

    sent: list[int] = []

    class FakePopen:  # a test double for the service process: records its signals
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.returncode: int | None = None

        def poll(self) -> int | None:
            return self.returncode

        def send_signal(self, signum: int) -> None:
            sent.append(signum)
            self.returncode = 0

        def wait(self, timeout: float | None = None) -> int | None:
            return self.returncode

    monkeypatch.setattr(orchestrator.subprocess, "Popen", FakePopen)
    child = orchestrator.ServiceChild("features", {}, 1, tmp_path / "features.log")
    child.start()
    assert child.stop() == 0
    child.start()  # the rolling restart
    assert child.stop() == 0
    assert sent == [signals.SIGTERM, signals.SIGTERM]
