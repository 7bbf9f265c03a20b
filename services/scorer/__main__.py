"""Run the scorer: ``python -m services.scorer``.

Start-up: verify and load the models (``model.control`` first, the settings where it says
nothing or names a version that is refused), refuse to start without a valid primary
(one line, exit 2), start the control follower, then run the exactly-once loop.
"""

from __future__ import annotations

import gc
import logging
import sys
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
from streamml.logs import configure_logging
from streamml.runtime import StreamRuntime
from streamml.settings import load_settings

log = logging.getLogger("services.scorer")

EXIT_USAGE = 2
EXIT_FAILURE = 1


def tune_gc(young_threshold: int) -> None:
    """Collect young objects every ``young_threshold`` allocations (0: leave the default).

    Every vector allocates short-lived containers (the decoded value, its categories, the
    record, the prediction, the output); a batch keeps a thousand of them alive, so at
    CPython's default threshold the collector keeps walking them.
    """
    if young_threshold > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)


def main() -> int:
    try:
        settings = load_settings(ScorerSettings)
    except ConfigError as exc:
        sys.stderr.write(f"scorer: {exc}\n")
        return EXIT_USAGE

    configure_logging(settings.log_level, settings.log_format, service="scorer")
    tune_gc(settings.gc_young_threshold)

    kafka = settings.kafka
    try:
        public_key = load_public_key(settings.public_key_path)
        rules = RulesScorer.from_config(
            settings.rules,
            default_score=settings.rules_default_score,
            threshold=settings.rules_threshold,
        )
        codec = AvroCodec.from_settings(kafka)
    except (SigningKeyError, ConfigError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_USAGE

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

    control: dict[str, tuple[int, dict[str, Any]]] = {}
    reader: ControlReader | None = None
    if settings.follow_control:
        reader = ControlReader(kafka, kafka.topic(settings.control_topic), codec)
        try:
            if reader.assign():
                control = reader.latest_by_role(settings.control_catch_up_timeout_s)
            else:
                log.warning("control topic %s does not exist yet", reader.topic)
        except StreamMLError as exc:  # the broker, not the settings: like a runtime failure
            log.error("cannot start: %s", exc)
            reader.close()
            return EXIT_FAILURE
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

    _, table = routes.current()
    if table.primary is None:
        log.error(
            "cannot start: no valid primary model (model.control: %s; configured: %s/%s in "
            "%s); see the refusals above",
            "instruction refused" if "primary" in control else "no instruction",
            settings.primary_model,
            settings.primary_version or "latest",
            settings.model_dir,
        )
        if reader is not None:
            reader.close()
        return EXIT_USAGE
    log.info("serving %s", table.describe())
    if reader is not None and reader.assigned:
        for value in applier.settings_instructions(
            [role for role in from_settings if role not in control],
            issued_at_ms=time.time_ns() // 1_000_000,
            issued_by=f"scorer:settings:{settings.runtime.instance_id}",
        ):
            try:
                publish_instruction(kafka, reader.topic, codec, value)
            except StreamMLError as exc:  # serving does not depend on it
                log.warning("could not record the %s on model.control: %s", value["role"], exc)

    follower = None
    if reader is not None:
        follower = ControlFollower(
            reader,
            applier.apply,
            clear_role=lambda role: applier.apply(
                {"role": role, "action": "clear", "issued_by": "a tombstone"}, -1
            ),
        )
        follower.start()
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
    try:
        return runtime.run()
    finally:
        if follower is not None:
            follower.stop()


if __name__ == "__main__":
    sys.exit(main())
