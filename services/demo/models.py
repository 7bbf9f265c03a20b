"""The demo's signed models, trained once and reused from a cache outside the repository.

Training is the slow part of a first demo run (three boosted models and their ONNX
parity checks); it depends only on the training code, the synthetic generator, the
feature set, the seed and the number of training events, never on how long the demo
runs. :class:`ModelCache` keys one cache entry by exactly those, so ``make demo`` at any
``DURATION`` reuses the same models once they exist, and a change to any input trains
anew. The entry holds the signed versions and the signing key pair; a run copies them
into its own ``--dir`` (a few hundred kB).

The drift reference is the one part that does depend on the run: it should cover as much
event time as the run (every card's history count and day-long windows grow with it), so
:meth:`ModelCache.reference_for` builds it for the run's number of events from the same
generator, without training, and caches it in the entry too.

Cache root: ``$STREAMML_CACHE_DIR`` or ``$XDG_CACHE_HOME/streamml`` (``~/.cache/streamml``),
the same root as the Kafka jars.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Bump when the layout of an entry changes (not for training changes: the sources are hashed).
_LAYOUT = 1
# Modules whose code decides what the models are: a change in any of them trains anew.
_SOURCES = ("services/scorer/training.py", "libs/streamml/synthetic.py")


def cache_root() -> Path:
    """``$STREAMML_CACHE_DIR`` or ``$XDG_CACHE_HOME/streamml`` (``~/.cache/streamml``)."""
    from streamml.broker import cache_dir

    return cache_dir().parent.parent  # cache_dir() is <root>/kafka/<version>


PRIMARY_NAME = "fraud-gbt"
"""The primary model's name (:data:`services.scorer.training.PRIMARY_NAME`, not imported:
see :func:`_source_digest`)."""


def _source_digest() -> str:
    # The files are found, not imported: importing the training module (scikit-learn,
    # skl2onnx) cost every demo run 1 s of CPU, and 50 s of wall time on a loaded machine,
    # only to read its path. The same files in the same order: cache entries stay valid.
    import importlib.util

    digest = hashlib.sha256()
    for name in ("services.scorer.training", "services.scorer.calibration", "streamml.synthetic"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()


def _feature_set_hash() -> str:
    from services.features.feature_set import demo_feature_set

    return str(demo_feature_set().content_hash)


@dataclass(frozen=True)
class ModelCache:
    """One cache entry: the models trained on ``events`` synthetic events of ``seed``."""

    events: int
    seed: int
    root: Path
    candidate: bool = True

    @property
    def inputs(self) -> dict[str, Any]:
        """Everything the models depend on (the entry's key is a hash of it)."""
        return {
            "layout": _LAYOUT,
            "sources": _source_digest(),
            "feature_set_hash": _feature_set_hash(),
            "seed": self.seed,
            "events": self.events,
            "candidate": self.candidate,
        }

    @property
    def key(self) -> str:
        blob = json.dumps(self.inputs, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def path(self) -> Path:
        return self.root / "demo-models" / f"events{self.events}-seed{self.seed}-{self.key}"

    @property
    def ready(self) -> bool:
        """The entry is complete (written last, after every model and the key pair)."""
        return (self.path / "inputs.json").exists()

    def build(self, train: Callable[[Path, Path], object] | None = None) -> None:
        """Train into a scratch directory and move it into place (a concurrent run that
        finishes first wins; ours is then dropped). ``train(models_dir, keys_dir)``
        defaults to :func:`services.scorer.training.train_and_sign` with a new key pair."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=self.path.parent))
        try:
            (train or self._train)(scratch / "models", scratch / "keys")
            (scratch / "inputs.json").write_text(json.dumps(self.inputs, indent=2))
            try:
                scratch.rename(self.path)
            except OSError:  # another run put the entry in place first
                if not self.ready:
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _train(self, models_dir: Path, keys_dir: Path) -> None:
        from services.scorer.artifact import PRIVATE_KEY_FILE, generate_keypair, load_private_key
        from services.scorer.training import train_and_sign

        generate_keypair(keys_dir)
        train_and_sign(
            events=self.events,
            seed=self.seed,
            out=models_dir,
            key=load_private_key(keys_dir / PRIVATE_KEY_FILE),
            candidate=self.candidate,
        )

    def install(self, models_dir: Path, keys_dir: Path) -> None:
        """Copy the entry's models and key pair into a run's directories."""
        for source, target in ((self.path / "models", models_dir), (self.path / "keys", keys_dir)):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        (keys_dir / "signing.key").chmod(0o600)

    def _reference_path(self, events: int) -> Path:
        return self.path / f"reference-events{events}.json"

    def has_reference(self, events: int) -> bool:
        """The reference over ``events`` events is cached already."""
        return self._reference_path(events).exists()

    def reference_for(self, events: int, primary: Path) -> dict[str, Any]:
        """The drift reference (JSON document) over ``events`` events, for a run of that many
        events; the primary's own reference when ``events`` is no more than it was trained
        on. Built once per ``events`` and kept in the entry."""
        own: dict[str, Any] = json.loads((primary / "metadata.json").read_text())["reference"]
        if events <= self.events:
            return own
        cached = self._reference_path(events)
        if cached.exists():
            document: dict[str, Any] = json.loads(cached.read_text())
            return document
        from services.scorer.artifact import MODEL_FILE
        from services.scorer.training import span_reference

        reference = span_reference(
            events=events, seed=self.seed, model_bytes=(primary / MODEL_FILE).read_bytes()
        )
        document = reference.model_dump(mode="json")
        # A scratch file of this process's own: two runs spanning the same reference at
        # once (parallel test workers, the suite's runs) each write whole and replace.
        scratch = cached.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps(document))
        scratch.replace(cached)
        return document
