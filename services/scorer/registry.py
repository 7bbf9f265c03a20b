"""Loads model versions from the model directory: verify, then build the session once."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from services.scorer.artifact import ArtifactError, list_versions, verify_version
from services.scorer.model import OnnxModel

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)


class ModelRegistry:
    """Verified, warmed-up :class:`OnnxModel` s by ``(name, version)``.

    Every :meth:`load` verifies the directory again (a file changed on disk since the last
    load is caught then, e.g. before a rollback), but reuses the onnxruntime session when
    the signed digest is the one already loaded, so a rollback to a recent version is
    instant. The last ``cache_size`` versions keep their sessions.
    """

    def __init__(
        self,
        model_dir: Path,
        public_key: Ed25519PublicKey,
        *,
        intra_op_threads: int = 1,
        warmup_rows: int = 16,
        cache_size: int = 6,
    ) -> None:
        self.model_dir = model_dir
        self._public_key = public_key
        self._intra_op_threads = intra_op_threads
        self._warmup_rows = warmup_rows
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str, str], OnnxModel] = OrderedDict()
        self._lock = threading.Lock()

    def latest_version(self, name: str) -> str:
        versions = list_versions(self.model_dir, name)
        if not versions:
            raise ArtifactError("missing", f"no version of model {name!r} in {self.model_dir}")
        return versions[-1]

    def load(self, name: str, version: str | None = None) -> OnnxModel:
        """The verified model ``name/version`` (latest when None); raises ArtifactError."""
        if version is None:
            version = self.latest_version(name)
        if not _safe_part(name) or not _safe_part(version):
            raise ArtifactError("missing", f"invalid model name/version {name!r}/{version!r}")
        artifact = verify_version(self.model_dir / name / version, self._public_key)
        key = (name, version, artifact.digest_sha256)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        model = OnnxModel(
            artifact, intra_op_threads=self._intra_op_threads, warmup_rows=self._warmup_rows
        )
        log.info(
            "model %s verified and loaded (digest %s, feature set %s/%s %s)",
            model.label,
            artifact.digest_sha256[:16],
            model.metadata.feature_set,
            model.metadata.feature_set_version,
            model.feature_set_hash[:12],
        )
        with self._lock:
            self._cache[key] = model
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return model


def _safe_part(part: str) -> bool:
    """A name or version that stays one directory level below its parent."""
    return bool(part) and "/" not in part and "\\" not in part and not part.startswith(".")
