"""Settings of the drift service (env prefix ``STREAMML_DRIFT_``, nested with ``__``).

Example: ``STREAMML_DRIFT_REFERENCE_PATH=models/fraud/3``,
``STREAMML_DRIFT_TESTS__PSI_ALERT=0.3``, ``STREAMML_DRIFT_DETECTORS__ADWIN_DELTA=0.001``,
``STREAMML_DRIFT_FEATURE_DETECTORS='{"amount": {"ph_threshold": 80}}'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.drift.detectors import DetectorParams
from services.drift.episodes import WindowTestParams
from streamml.settings import ServiceSettings

DEV_STATE_KEY = "streamml-dev-drift-state-key"


class DriftSettings(ServiceSettings):
    """What the drift service reads, what it compares against, and how sensitive it is."""

    model_config = SettingsConfigDict(env_prefix="STREAMML_DRIFT_")

    reference_path: Path = Field(
        default=Path("models/current"),
        description="Model version directory, its metadata.json, or a standalone reference "
        "JSON with the same keys: the training distributions live traffic is compared with.",
    )
    features_topic: str = Field(default="features", description="FeatureVector input (logical).")
    predictions_topic: str = Field(
        default="predictions", description="Prediction input (logical); co-partitioned."
    )
    monitor_predictions: bool = Field(
        default=True, description="Also monitor the score and the positive-decision share."
    )
    predictions_route: str | None = Field(
        default=None,
        description="Monitor the predictions of this route (e.g. 'primary') of the "
        "reference's model, whatever version serves it, against the reference: a promoted "
        "version whose scores look unlike the reference's is score drift within a window. "
        "None: the reference's own model version only (any route); after a promotion its "
        "predictions stop and the score tests see nothing.",
    )
    windows_topic: str = Field(
        default="drift.windows",
        description="Internal 1-partition topic of per-partition window reports (logical).",
    )
    alerts_topic: str = Field(default="drift.alerts", description="DriftAlert output (logical).")
    window_ms: int = Field(
        default=60_000, ge=1, description="Event-time tumbling window length in milliseconds."
    )
    max_window_jump: int = Field(
        default=60,
        ge=1,
        description="A record more than this many windows ahead of its partition's open "
        "window is treated as a bad timestamp and counted in the open window...",
    )
    jump_confirm_records: int = Field(
        default=20,
        ge=1,
        description="...unless this many such records arrive in a row: then the stream "
        "really moved on (a traffic gap) and the window jumps.",
    )
    source_partitions: int = Field(
        default=0,
        ge=0,
        description="Partitions of the features topic; 0 = read from the broker at start. "
        "A merged window is tested once every partition has reported it.",
    )
    replayed: Literal["own_windows", "skip", "current_window"] = Field(
        default="own_windows",
        description="Records carrying replay.*/redrive.* headers (an operator replay or a "
        "redrive): 'own_windows' counts them in windows of their own event time, apart from "
        "the live windows, each original (replay.source) once, and their alerts say "
        "replayed; 'skip' does not monitor them; 'current_window' counts them like live "
        "records in the open window (the behaviour before own windows).",
    )
    monitor_from_ms: int = Field(
        default=0,
        ge=0,
        description="Event time (ms since the epoch) from which records are monitored; "
        "earlier ones are read and not counted (a monitor deployed beside a stream whose "
        "first minutes are every entity's cold start, or a backfill watched from a point "
        "on). 0 = every record.",
    )
    detectors: DetectorParams = Field(
        default_factory=DetectorParams, description="Streaming detector defaults."
    )
    feature_detectors: dict[str, DetectorParams] = Field(
        default_factory=dict,
        description="Per-feature detector parameters (feature name -> parameters), JSON.",
    )
    tests: WindowTestParams = Field(
        default_factory=WindowTestParams, description="Window tests and alert episodes."
    )
    state_key: SecretStr = Field(
        default=SecretStr(DEV_STATE_KEY),
        description="HMAC key signing the detector state in the changelog; set a secret in "
        "production (state signed with another key is not loaded, detectors start afresh).",
    )
