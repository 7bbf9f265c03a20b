"""Where the performance service finds each model version's calibration map.

Predictions name their model version (``model_name``, ``model_version``); the calibration is
in that version's signed metadata, in the scorer's model directory. The service reads the
version directory the first time it sees the version, checks its digest and signature with
the scorer's own :func:`~services.scorer.artifact.verify_version`, and keeps the answer
(versions are immutable). A version that is absent, unsigned or without a calibration is
estimated as ``not_calibrated``, with one log line saying why (docs/estimated-performance.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from services.performance.estimation import Estimator
from services.performance.settings import PerformanceSettings
from services.scorer.artifact import ArtifactError, SigningKeyError, load_public_key, verify_version
from services.scorer.calibration import Calibration

log = logging.getLogger(__name__)


class ModelDirCalibrations:
    """``(name, version) -> Calibration | None`` read from signed model version directories."""

    def __init__(self, model_dir: Path | None, public_key_path: Path) -> None:
        self._model_dir = model_dir
        self._public_key_path = public_key_path
        # Not a start-up error: the directory may be filled after the service starts (as the
        # scorer's may); until a version is there, its estimates are 'not_calibrated'.
        if model_dir is not None and not model_dir.is_dir():
            log.warning("model_dir does not exist (yet)", extra={"model_dir": str(model_dir)})

    def __call__(self, name: str, version: str) -> Calibration | None:
        if self._model_dir is None:
            return None
        path = self._model_dir / name / version
        try:
            artifact = verify_version(path, load_public_key(self._public_key_path))
        except (ArtifactError, SigningKeyError) as exc:
            log.warning(
                "no calibration for the estimates of this model version: %s", exc,
                extra={"model_name": name, "model_version": version},
            )  # fmt: skip
            return None
        calibration = artifact.metadata.calibration
        if calibration is None:
            log.warning(
                "model version has no calibration map (trained before calibration existed)",
                extra={"model_name": name, "model_version": version},
            )
        elif not calibration.calibrated:
            log.warning(
                "model version is not calibrated well enough to estimate its performance",
                extra={"model_name": name, "model_version": version,
                       "ece_after": calibration.ece_after, "max_ece": calibration.max_ece,
                       "positives": calibration.positives},
            )  # fmt: skip
        return calibration


def estimator_from_settings(settings: PerformanceSettings) -> Estimator:
    """The estimator the service runs with these settings."""
    return Estimator(
        ModelDirCalibrations(settings.model_dir, settings.public_key_path),
        interval_ms=int(settings.report_interval.total_seconds() * 1000),
        window_ms=int(settings.window_duration.total_seconds() * 1000),
        min_predictions=settings.estimate_min_predictions,
    )
