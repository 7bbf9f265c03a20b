"""``model.control`` instructions: build them, and apply them to the route table.

:class:`ControlApplier` turns a decoded ``ModelControl`` record into a new route table:
it loads and verifies the named version (registry), checks its feature set against what
the scorer sees, and publishes the table (swapped in by the processor between batches).
A refused instruction changes nothing: the scorer keeps serving what it has, logs one line
saying why and counts ``streamml_scorer_model_refused_total{role,reason}``. No Kafka here;
:mod:`services.scorer.follower` feeds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from services.scorer import metrics
from services.scorer.artifact import ArtifactError
from services.scorer.routing import ROLES, ModelRoutes, RouteEntry

if TYPE_CHECKING:
    from services.scorer.model import OnnxModel
    from services.scorer.registry import ModelRegistry

log = logging.getLogger(__name__)

SCHEMA = "ModelControl"
TOPIC = "model.control"


def control_record(
    role: str,
    action: str,
    *,
    model_name: str | None,
    model_version: str | None,
    issued_at_ms: int,
    issued_by: str,
    canary_share: float = 0.0,
    previous: Mapping[str, Any] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """A ``ModelControl`` value; ``previous`` is the role's current record (for rollback)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if action not in ("promote", "clear"):
        raise ValueError(f"action must be promote or clear, not {action!r}")
    held = previous is not None and previous.get("action") == "promote"
    return {
        "role": role,
        "action": action,
        "model_name": model_name,
        "model_version": model_version,
        "canary_share": float(canary_share),
        "previous_model_name": previous.get("model_name") if held and previous else None,
        "previous_model_version": previous.get("model_version") if held and previous else None,
        "previous_canary_share": float(previous.get("canary_share", 0.0))
        if held and previous
        else 0.0,
        "issued_at": int(issued_at_ms),
        "issued_by": issued_by,
        "reason": reason,
    }


def check_instruction(value: Mapping[str, Any]) -> str | None:
    """What is wrong with a ModelControl value, or None if it can be applied."""
    role, action = value.get("role"), value.get("action")
    if role not in ROLES:
        return f"unknown role {role!r}"
    if action == "clear":
        if role == "primary":
            return "the primary cannot be cleared; promote another version"
        return None
    if action != "promote":
        return f"unknown action {action!r}"
    if not value.get("model_name") or not value.get("model_version"):
        return "promote needs model_name and model_version"
    if role == "canary" and not 0.0 < float(value.get("canary_share") or 0.0) <= 1.0:
        return f"canary_share must be in (0, 1], got {value.get('canary_share')}"
    return None


class ControlApplier:
    """Applies ModelControl instructions to :class:`ModelRoutes`.

    ``expected_feature_set_hash`` returns the hash the scorer must accept (configured, or
    the one last seen on incoming vectors; None while unknown): a version trained on
    another feature set is refused.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        routes: ModelRoutes,
        *,
        expected_feature_set_hash: Callable[[], str | None],
    ) -> None:
        self._registry = registry
        self._routes = routes
        self._expected_hash = expected_feature_set_hash

    @property
    def routes(self) -> ModelRoutes:
        return self._routes

    def bootstrap(
        self,
        configured: Mapping[str, tuple[str | None, str | None]],
        control: Mapping[str, tuple[int, Mapping[str, Any]]],
        *,
        canary_share: float,
    ) -> list[str]:
        """The start-up route table: model.control's instruction per role, else ``configured``.

        ``configured`` maps role -> (model name or None, version or None = latest);
        ``control`` maps role -> (offset, last instruction) as read from the topic. A
        refused instruction falls back to the configured version, never to nothing.
        Returns the roles filled from ``configured``.
        """
        from_settings: list[str] = []
        for role in ROLES:
            name, version = configured.get(role, (None, None))
            if role in control:
                offset, value = control[role]
                if self.apply(value, offset) == "applied" or value.get("action") == "clear":
                    continue
                log.warning("model.control's %s is refused; trying the configured one", role)
            if not name:
                continue
            if role == "canary" and canary_share <= 0:
                log.warning("canary model %s is configured with share 0; not routing to it", name)
                continue
            try:
                model = self.load_for_role(role, name, version or None)
            except ArtifactError as exc:
                log.error(
                    "refusing configured %s %s/%s (%s): %s",
                    role, name, version or "latest", exc.reason, exc,
                )  # fmt: skip
                continue
            _, table = self._routes.current()
            share = canary_share if role == "canary" else None
            self._routes.publish(table.with_role(role, RouteEntry(model, -1), canary_share=share))
            log.info("%s is %s (from settings)", role, model.label)
            from_settings.append(role)
        return from_settings

    def settings_instructions(
        self, roles: list[str], *, issued_at_ms: int, issued_by: str
    ) -> list[dict[str, Any]]:
        """Promote records for roles that came from the settings, for ``model.control``.

        Written once when the topic has no instruction for a role, so the topic holds the
        whole serving state and the first operator promotion records a previous version
        that ``rollback`` can return to.
        """
        _, table = self._routes.current()
        records = []
        for role in roles:
            entry = table.get(role)
            if entry is None:
                continue
            records.append(
                control_record(
                    role,
                    "promote",
                    model_name=entry.model.name,
                    model_version=entry.model.version,
                    canary_share=table.canary_share if role == "canary" else 0.0,
                    issued_at_ms=issued_at_ms,
                    issued_by=issued_by,
                    reason="initial state from the scorer settings",
                )
            )
        return records

    def load_for_role(self, role: str, name: str, version: str | None) -> OnnxModel:
        """Verify, load and feature-set-check a version for ``role``; raise ArtifactError."""
        try:
            model = self._registry.load(name, version)
            expected = self._expected_hash()
            if expected is not None and model.feature_set_hash != expected:
                raise ArtifactError(
                    "feature_set_mismatch",
                    f"{model.label} was trained on feature set hash "
                    f"{model.feature_set_hash[:12]}, incoming vectors have {expected[:12]}",
                )
        except ArtifactError as exc:
            metrics.MODEL_REFUSED.labels(role, exc.reason).inc()
            raise
        return model

    def apply(self, value: Mapping[str, Any], revision: int) -> str:
        """Apply one instruction read at ``revision`` (its offset); return the outcome label."""
        problem = check_instruction(value)
        role = str(value.get("role"))
        if problem is not None:
            log.error("ignoring model.control record at offset %d: %s", revision, problem)
            metrics.CONTROL_RECORDS.labels("invalid").inc()
            return "invalid"
        _, table = self._routes.current()
        current = table.get(role)
        if value["action"] == "clear":
            if current is None:
                metrics.CONTROL_RECORDS.labels("unchanged").inc()
                return "unchanged"
            self._routes.publish(table.with_role(role, None, canary_share=_share(role, 0.0)))
            log.warning(
                "model.control: %s %s cleared by %s (%s)",
                role,
                current.model.label,
                value.get("issued_by"),
                value.get("reason") or "no reason given",
            )
            metrics.CONTROL_RECORDS.labels("applied").inc()
            return "applied"
        name, version = str(value["model_name"]), str(value["model_version"])
        try:
            model = self.load_for_role(role, name, version)
        except ArtifactError as exc:
            keeping = current.model.label if current is not None else "nothing"
            log.error(
                "refusing model %s/%s as %s (%s): %s; keeping %s",
                name,
                version,
                role,
                exc.reason,
                exc,
                keeping,
            )
            metrics.CONTROL_RECORDS.labels("refused").inc()
            return "refused"
        share = float(value.get("canary_share") or 0.0)
        if (
            current is not None
            and current.model is model
            and (role != "canary" or share == table.canary_share)
        ):
            # Same verified version: only the revision moves (it identifies the instruction).
            self._routes.publish(table.with_role(role, RouteEntry(model, revision)))
            log.info("model.control: %s stays %s (offset %d)", role, model.label, revision)
            metrics.CONTROL_RECORDS.labels("unchanged").inc()
            return "unchanged"
        self._routes.publish(
            table.with_role(role, RouteEntry(model, revision), canary_share=_share(role, share))
        )
        log.warning(
            "model.control: %s is now %s%s (was %s), issued by %s (%s)",
            role,
            model.label,
            f" for {share:.1%} of entities" if role == "canary" else "",
            current.model.label if current is not None else "nothing",
            value.get("issued_by"),
            value.get("reason") or "no reason given",
        )
        metrics.CONTROL_RECORDS.labels("applied").inc()
        return "applied"


def _share(role: str, share: float) -> float | None:
    return share if role == "canary" else None
