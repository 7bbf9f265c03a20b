"""What the demo runs and with which settings: one :class:`DemoPlan`.

Time is compressed: the synthetic generator draws event times at ``event_rate_per_s``
(5 transactions per second over all cards, the rate the demo models are trained at), while
the producer sends ``rate`` records per wall-clock second. Event time therefore runs
``rate / event_rate_per_s`` times faster than the wall clock (40x at the defaults): three
minutes of demo cover two hours of card traffic, and a label whose delay is 15 minutes of
event time arrives about 22 seconds after its event. Chargebacks (days of delay) mostly stay
in the future, as they would in a live system, which the label coverage shows.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from streamml.synthetic import DEFAULT_START_MS

CLOCK_FEATURES = ("hour_of_day_sin", "hour_of_day_cos", "day_of_week_sin", "day_of_week_cos")

SERVICES = ("features", "scorer", "drift", "performance")

# Output and audit topics (logical names) the observer reads.
AUDIT_TOPICS = ("events", "features", "predictions")
DLQ_TOPICS = ("events.dlq", "features.dlq", "labels.dlq", "predictions.dlq")
RESULT_TOPICS = ("drift.alerts", "performance", "performance.alerts")


@dataclass(frozen=True)
class DemoPlan:
    """Every knob of one demo run (the CLI fills it; defaults suit 2 shared cores)."""

    duration_s: float = 180.0
    rate: float = 200.0
    entities: int = 5000
    event_rate_per_s: float = 5.0
    drift_fraction: float = 0.35
    monitor_after_fraction: float = 0.15
    """The drift service monitors from the event time this share of the duration in
    (``monitor_from_ms``; it starts with the others and reads the records before it
    without counting them): the first minutes of a run are every card's cold start, which
    a reference drawn from hours of traffic would flag as drift."""
    duplicate_share: float = 0.03
    canary_share: float = 0.1
    """Share of the cards the candidate model version serves as a canary (0: none)."""
    malformed_share: float = 0.002
    label_delay_scale: float = 1.0
    """Multiplies every label's delay (:func:`streamml.synthetic.label_record`): the soak,
    which shortens the label horizon, shortens the delays by as much."""
    seed: int = 2026
    model_seed: int | None = None
    """Seed the models are trained on (None: ``seed``): a suite running several traffic
    seeds trains and caches the models once."""
    partitions: int = 2
    train_events: int = 20_000
    """Synthetic events the models are trained on: fixed, whatever the duration (the
    models are cached by it, :mod:`services.demo.models`); the drift reference covers
    the run's own length."""
    run_dir: Path = Path(".demo")
    bootstrap: str | None = None
    topic_prefix: str = ""
    drain_timeout_s: float = 90.0
    scenario: str | None = None
    """A failure-injection scenario (:mod:`services.demo.scenarios`) injected at the drift
    point instead of the demo's drift; None: the demo as it always ran."""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def time_compression(self) -> float:
        """How many event-time seconds pass per wall-clock second."""
        return self.rate / self.event_rate_per_s

    @property
    def n_events(self) -> int:
        """Distinct valid events the producer sends over the whole duration."""
        return max(1, int(self.rate * self.duration_s))

    @property
    def drift_index(self) -> int:
        """Index of the first drifted event (0-based, as ``generate_events`` counts)."""
        return int(self.n_events * self.drift_fraction)

    @property
    def warmup_s(self) -> float:
        """Wall seconds of traffic before the drift service's monitoring starts."""
        return self.duration_s * self.monitor_after_fraction

    @property
    def monitor_from_ms(self) -> int:
        """The event time the drift service monitors from (0: from the first record): the
        warm-up's wall seconds on the compressed clock, from the generator's start. In event
        time, not by when the service joins, so a loaded machine that starts the service
        slowly monitors the same records."""
        if self.monitor_after_fraction <= 0:
            return 0
        return DEFAULT_START_MS + round(self.warmup_s * self.time_compression * 1000)

    @property
    def quality_window(self) -> int:
        """Labeled predictions in the performance service's sliding window: small enough
        that a short run fills windows with drifted predictions only, never under 300."""
        return max(300, min(1000, self.n_events // 20))

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def models_dir(self) -> Path:
        return self.run_dir / "models"

    @property
    def keys_dir(self) -> Path:
        return self.run_dir / "keys"

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.html"

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "summary.json"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def check(self) -> str | None:
        """What is wrong with the plan, in one line, or None."""
        if self.duration_s < 30:
            return "--duration must be at least 30 seconds (labels need time to arrive)"
        if not 1 <= self.rate <= 5000:
            return "--rate must be between 1 and 5000 records/s"
        if not 0.05 <= self.drift_fraction <= 0.95:
            return "--drift-at must be between 0.05 and 0.95 (a share of the duration)"
        if not 0 <= self.monitor_after_fraction <= self.drift_fraction - 0.1:
            return "--monitor-after must be between 0 and --drift-at minus 0.1"
        if not 0 <= self.canary_share <= 0.5:
            return "--canary must be between 0 and 0.5"
        if not 0 <= self.duplicate_share <= 0.5:
            return "--duplicates must be between 0 and 0.5"
        if not 0 <= self.malformed_share <= 0.05:
            return "--malformed must be between 0 and 0.05 (more would trip the fail-stop)"
        if self.entities < 10:
            return "--entities must be at least 10"
        if not 1 <= self.partitions <= 16:
            return "--partitions must be between 1 and 16"
        if self.scenario is not None:
            from services.demo.scenarios import SCENARIOS

            if self.scenario not in SCENARIOS:
                return f"--scenario must be one of {', '.join(SCENARIOS)}, not {self.scenario!r}"
            needs = SCENARIOS[self.scenario].event_s_after
            after = self.duration_s * (1 - self.drift_fraction)
            if after * self.time_compression < needs:
                return (
                    f"--scenario {self.scenario} needs {needs / 60:.0f} minutes of event time "
                    f"after the injection for its labels to arrive: at --rate {self.rate:g} "
                    f"that is {needs / self.time_compression:.0f} s of traffic after "
                    f"--drift-at, {after:.0f} s here (raise --duration or lower --drift-at)"
                )
        return None


def new_prefix() -> str:
    """A topic prefix unique to one run on a shared broker (``demo<hex>.``)."""
    return f"demo{secrets.token_hex(3)}."


def service_env(
    plan: DemoPlan, service: str, *, bootstrap: str, http_port: int, reference: Path
) -> dict[str, str]:
    """The environment of one service process (on top of the demo's own environment).

    Window sizes and intervals are event-time durations scaled to the compressed clock, so
    that something visible happens every few wall-clock seconds.
    """
    prefix = f"STREAMML_{service.upper()}_"
    env = {
        "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMML_KAFKA_TOPIC_PREFIX": plan.topic_prefix,
        f"{prefix}HTTP__HOST": "127.0.0.1",
        f"{prefix}HTTP__PORT": str(http_port),
        f"{prefix}RUNTIME__INSTANCE_ID": "demo",
        f"{prefix}RUNTIME__LAG_INTERVAL_S": "1",
        f"{prefix}LOG_LEVEL": "INFO",
        # Keep the four services light on two shared cores: fewer, larger transactions.
        f"{prefix}RUNTIME__BATCH_MAX_MS": "200",
    }
    if service == "scorer":
        env[f"{prefix}MODEL_DIR"] = str(plan.models_dir.resolve())
        env[f"{prefix}PUBLIC_KEY_PATH"] = str((plan.keys_dir / "signing.pub").resolve())
        env[f"{prefix}PRIMARY_VERSION"] = "1"  # else the highest version (the candidate)
        if plan.canary_share > 0:
            # The candidate (fraud-gbt/2) serves a share of the cards: the route mix and
            # the live AUC per model version show both.
            env[f"{prefix}CANARY_MODEL"] = "fraud-gbt"
            env[f"{prefix}CANARY_VERSION"] = "2"
            env[f"{prefix}CANARY_SHARE"] = str(plan.canary_share)
    elif service == "drift":
        env[f"{prefix}REFERENCE_PATH"] = str(reference.resolve())
        env[f"{prefix}SOURCE_PARTITIONS"] = str(plan.partitions)
        # Three minutes of event time per merged window: enough values (~900 at 5/s) for
        # the window tests (at least 500), about 4.5 s of wall time at the default rate.
        env[f"{prefix}WINDOW_MS"] = "180000"
        # A partition whose events stop is stale after two windows (~6 min of event time)
        # the other partitions moved on (the default, five, suits one-minute windows).
        env[f"{prefix}TESTS__STALE_WINDOWS"] = "2"
        # Compare whatever version serves the primary route with the reference: a promoted
        # version whose scores look unlike the reference's is score drift within a window
        # (pinned to the reference's version, its predictions would only stop).
        env[f"{prefix}PREDICTIONS_ROUTE"] = "primary"
        if plan.monitor_from_ms:  # the cards' cold start is read, not monitored
            env[f"{prefix}MONITOR_FROM_MS"] = str(plan.monitor_from_ms)
    elif service == "performance":
        env.update(
            {
                # Small windows and frequent reports: quality moves within seconds.
                f"{prefix}WINDOW_SIZE": str(plan.quality_window),
                f"{prefix}REPORT_INTERVAL": "2m",
                f"{prefix}SLO_MIN": '{"roc_auc": 0.9}',
                f"{prefix}SLO_CONSECUTIVE_WINDOWS": "3",
                f"{prefix}SLO_MIN_LABELED": "200",
                # Calibration maps for the estimates before labels (estimated_* fields).
                f"{prefix}MODEL_DIR": str(plan.models_dir.resolve()),
                f"{prefix}PUBLIC_KEY_PATH": str((plan.keys_dir / "signing.pub").resolve()),
            }
        )
    for key, value in plan.extra_env.items():
        if key.startswith(prefix) or key.startswith("STREAMML_KAFKA_"):
            env[key] = value
    return env


def broker_port() -> int:
    """KAFKA_PORT when set, else 9092 when free, else any free port."""
    from streamml.broker import free_port

    given = os.environ.get("KAFKA_PORT")
    if given:
        return int(given)
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        taken = sock.connect_ex(("127.0.0.1", 9092)) == 0
    return free_port() if taken else 9092
