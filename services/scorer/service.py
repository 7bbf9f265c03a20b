"""The scorer as it runs: verified models, ``model.control`` caught up and followed, the loop.

Start-up (:func:`build`): verify and load the models (``model.control`` first, the
settings where it says nothing or names a version that is refused), refuse to start
without a valid primary (a :class:`~streamml.errors.ConfigError`: one line, exit 2),
record on ``model.control`` the roles that only the settings filled, then hand over a
:class:`ScorerService`, which starts the control follower and runs the exactly-once loop.
How ``model.control`` is read and written, and why on three paths, is in
:mod:`services.scorer.follower`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from services.scorer.artifact import SigningKeyError, load_public_key
from services.scorer.control import ControlApplier
from services.scorer.follower import ControlFollower, ControlReader, publish_instruction
from services.scorer.processor import (
    NAMELESS_VECTOR,
    VECTOR_SCHEMA,
    ScorerProcessor,
    names_decoder,
)
from services.scorer.registry import ModelRegistry
from services.scorer.routing import ModelRoutes
from services.scorer.rules import RulesScorer
from services.scorer.settings import ScorerSettings
from streamml.codec import AvroCodec
from streamml.errors import ConfigError, StreamMLError
from streamml.runtime import StreamRuntime
from streamml.service import tune_gc

log = logging.getLogger("services.scorer")


class ScorerService:
    """The loop, and the follower that applies new instructions while it runs."""

    def __init__(self, runtime: StreamRuntime, follower: ControlFollower | None) -> None:
        self.runtime = runtime
        self.follower = follower

    def run(self) -> int:
        if self.follower is not None:
            self.follower.start()
        try:
            return self.runtime.run()
        finally:
            if self.follower is not None:
                self.follower.stop()


def build(settings: ScorerSettings) -> ScorerService:
    """A scorer instance serving a verified primary model, from its settings."""
    tune_gc(settings.gc_young_threshold)
    kafka = settings.kafka
    try:
        public_key = load_public_key(settings.public_key_path)
    except SigningKeyError as exc:
        raise ConfigError(str(exc)) from exc
    rules = RulesScorer.from_config(
        settings.rules,
        default_score=settings.rules_default_score,
        threshold=settings.rules_threshold,
    )
    codec = AvroCodec.from_settings(kafka)
    registry = ModelRegistry(
        settings.model_dir,
        public_key,
        intra_op_threads=settings.intra_op_threads,
        warmup_rows=settings.warmup_rows,
    )
    routes = ModelRoutes()
    processor = ScorerProcessor(
        routes,
        predictions_topic=kafka.topic(settings.predictions_topic),
        shadow_topic=kafka.topic(settings.shadow_topic),
        control_topic=kafka.topic(settings.control_topic) if settings.follow_control else None,
        rules=rules,
        policy=settings.policy(),
        instance=settings.runtime.instance_id,
        names_of=None if settings.check_names else names_decoder(codec),
    )
    applier = ControlApplier(
        registry,
        routes,
        expected_feature_set_hash=lambda: (
            settings.expected_feature_set_hash or processor.observed_feature_set_hash
        ),
    )
    reader = None
    if settings.follow_control:
        reader = ControlReader(kafka, kafka.topic(settings.control_topic), codec)
    try:
        follower = _bootstrap(settings, applier, reader, codec)
    except BaseException:
        if reader is not None:
            reader.close()
        raise
    runtime = StreamRuntime(
        service="scorer",
        processor=processor,
        inputs={
            kafka.topic(settings.features_topic): (
                VECTOR_SCHEMA if settings.check_names else NAMELESS_VECTOR
            )
        },
        kafka=kafka,
        settings=settings.runtime,
        http=settings.http,
        codec=codec,
    )
    return ScorerService(runtime, follower)


def _bootstrap(
    settings: ScorerSettings,
    applier: ControlApplier,
    reader: ControlReader | None,
    codec: AvroCodec,
) -> ControlFollower | None:
    """Serve what ``model.control`` says (the settings where it is silent); the follower
    that applies what comes next (None without ``follow_control``)."""
    control: dict[str, tuple[int, dict[str, Any]]] = {}
    if reader is not None:
        if reader.assign():
            control = reader.latest_by_role(settings.control_catch_up_timeout_s)
        else:
            log.warning("control topic %s does not exist yet", reader.topic)
    from_settings = applier.bootstrap(
        {
            "primary": (settings.primary_model, settings.primary_version),
            "fallback": (settings.fallback_model, settings.fallback_version),
            "shadow": (settings.shadow_model, settings.shadow_version),
            "canary": (settings.canary_model, settings.canary_version),
        },
        control,
        canary_share=settings.canary_share,
    )
    _, table = applier.routes.current()
    if table.primary is None:
        raise ConfigError(
            "no valid primary model (model.control: "
            f"{'instruction refused' if 'primary' in control else 'no instruction'}; "
            f"configured: {settings.primary_model}/{settings.primary_version or 'latest'} in "
            f"{settings.model_dir}); see the refusals above"
        )
    log.info("serving %s", table.describe())
    if reader is None:
        return None
    if reader.assigned:
        roles = [role for role in from_settings if role not in control]
        _record_settings(settings, applier, reader, codec, roles)
    return ControlFollower(
        reader,
        applier.apply,
        clear_role=lambda role: applier.apply(
            {"role": role, "action": "clear", "issued_by": "a tombstone"}, -1
        ),
    )


def _record_settings(
    settings: ScorerSettings,
    applier: ControlApplier,
    reader: ControlReader,
    codec: AvroCodec,
    roles: list[str],
) -> None:
    """Write to ``model.control`` the roles only the settings filled, so that every
    instance converges on them and ``streamml scorer status`` shows them."""
    for value in applier.settings_instructions(
        roles,
        issued_at_ms=time.time_ns() // 1_000_000,
        issued_by=f"scorer:settings:{settings.runtime.instance_id}",
    ):
        try:
            publish_instruction(settings.kafka, reader.topic, codec, value)
        except StreamMLError as exc:  # serving does not depend on it
            log.warning("could not record the %s on model.control: %s", value["role"], exc)
