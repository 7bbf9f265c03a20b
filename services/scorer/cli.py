"""Operator commands of the scorer, mounted as ``streamml scorer ...``.

``keygen`` makes the signing key pair, ``train`` builds and signs model versions,
``verify`` checks one, ``promote``/``rollback`` write instructions to ``model.control``
(every scorer instance follows them), ``status`` shows what the topic says. A bad
argument prints one ``error: ...`` line and exits 2; a broker failure exits 1.
Heavy libraries (scikit-learn, onnxruntime, Kafka) load inside the commands that use them.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from services.scorer.artifact import (
    ArtifactError,
    SigningKeyError,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    verify_version,
)
from services.scorer.control import TOPIC, check_instruction, control_record
from streamml.commandline import command_group, fail
from streamml.errors import BrokerError, ConfigError, StreamMLError
from streamml.settings import KafkaSettings, load_settings

app = command_group(
    "scorer",
    "Model artifacts and routing of the scorer: keys, training, verification, "
    "promotion and rollback.",
)

ROLE_CHOICES = ("primary", "fallback", "shadow", "canary")


def _issuer() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Directory for signing.key/signing.pub.")],
) -> None:
    """Create an Ed25519 signing key pair (private key mode 0600; never commit it)."""
    try:
        private_path, public_path = generate_keypair(out)
    except (SigningKeyError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"private key: {private_path} (mode 0600, keep it out of the repository)")
    typer.echo(f"public key:  {public_path} (key id {key_id(load_public_key(public_path))})")


@app.command()
def train(
    events: Annotated[int, typer.Option("--events", min=200, help="Synthetic events.")] = 30_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic events.")] = 7,
    out: Annotated[Path, typer.Option("--out", help="Model directory.")] = Path("models"),
    key: Annotated[Path, typer.Option("--key", help="Private signing key.")] = Path(
        "keys/signing.key"
    ),
    candidate: Annotated[
        bool, typer.Option("--candidate/--no-candidate", help="Also a candidate primary.")
    ] = False,
) -> None:
    """Train primary (boosted trees) + fallback (logistic regression), export ONNX, sign."""
    from services.scorer.training import TrainingError, train_and_sign

    try:
        private_key = load_private_key(key)
    except SigningKeyError as exc:
        fail(f"{exc} (create one with: streamml scorer keygen --out {key.parent})")
    try:
        written = train_and_sign(
            events=events, seed=seed, out=out, key=private_key, candidate=candidate
        )
    except (TrainingError, ConfigError) as exc:
        fail(str(exc))
    for version in written:
        meta = version.metadata
        typer.echo(
            f"{version.path}: {meta.algorithm} auc={meta.metrics['auc']:.4f} "
            f"ap={meta.metrics['average_precision']:.4f} threshold={meta.threshold:.4f} "
            f"feature_set={meta.feature_set}/{meta.feature_set_version} "
            f"hash={meta.feature_set_hash[:12]}"
        )


@app.command()
def verify(
    directory: Annotated[Path, typer.Argument(help="A model version directory.")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="Ed25519 public key (PEM).")
    ] = Path("keys/signing.pub"),
    load: Annotated[
        bool, typer.Option("--load/--no-load", help="Also load and warm up in onnxruntime.")
    ] = True,
) -> None:
    """Check digest and signature (and that onnxruntime runs it); exit 1 when refused."""
    try:
        key = load_public_key(public_key)
    except SigningKeyError as exc:
        fail(str(exc))
    try:
        artifact = verify_version(directory, key)
        if load:
            from services.scorer.model import OnnxModel

            OnnxModel(artifact)
    except ArtifactError as exc:
        typer.echo(f"REFUSED ({exc.reason}): {exc}", err=True)
        raise typer.Exit(1) from exc
    meta = artifact.metadata
    typer.echo(
        f"OK {meta.model_name}/{meta.model_version}: signed by key {key_id(key)}, "
        f"digest {artifact.digest_sha256[:16]}, feature set {meta.feature_set}/"
        f"{meta.feature_set_version} ({meta.feature_set_hash[:12]}), "
        f"{len(meta.input_names)} inputs, threshold {meta.threshold:.4f}"
    )


def _kafka() -> KafkaSettings:
    return load_settings(KafkaSettings)


def _read_state(kafka: Any, topic: str, codec: Any, timeout_s: float) -> dict[str, Any]:
    from services.scorer.follower import ControlReader

    reader = ControlReader(kafka, topic, codec)
    try:
        if not reader.assign():
            raise BrokerError(
                f"topic {topic} does not exist; create the topics first (streamml topics create)"
            )
        return {role: value for role, (_, value) in reader.latest_by_role(timeout_s).items()}
    finally:
        reader.close()


def _control(
    *,
    role: str,
    action: str,
    name: str | None,
    version: str | None,
    share: float,
    reason: str | None,
    check: tuple[Path, Path] | None,
    previous_of: str | None = None,
) -> None:
    from streamml.codec import AvroCodec

    try:
        kafka = _kafka()
        codec = AvroCodec.from_settings(kafka)
        topic = kafka.topic(TOPIC)
        state = _read_state(kafka, topic, codec, 30.0)
        current = state.get(role)
        if previous_of is not None:  # rollback: promote what the role held before
            if current is None or not current.get("previous_model_name"):
                raise ConfigError(f"{role} has no previous version on {topic} to roll back to")
            name = current["previous_model_name"]
            version = current["previous_model_version"]
            share = float(current.get("previous_canary_share") or share)
        value = control_record(
            role, action, model_name=name, model_version=version, canary_share=share,
            issued_at_ms=time.time_ns() // 1_000_000, issued_by=_issuer(), previous=current,
            reason=reason,
        )  # fmt: skip
        problem = check_instruction(value)
        if problem:
            raise ConfigError(problem)
        if check is not None and action == "promote":
            _check_locally(check[0], check[1], str(name), str(version))
        from services.scorer.follower import publish_instruction

        publish_instruction(kafka, topic, codec, value)
    except BrokerError as exc:
        fail(str(exc), code=1)
    except StreamMLError as exc:
        fail(str(exc))
    was = (
        f"{current.get('model_name')}/{current.get('model_version')}"
        if current and current.get("action") == "promote"
        else "nothing"
    )
    what = f"{name}/{version}" if action == "promote" else "cleared"
    typer.echo(f"{topic}: {role} {what} (was {was})")


def _check_locally(model_dir: Path, public_key: Path, name: str, version: str) -> None:
    """Refuse to promote what the scorers would refuse anyway (fail early, at the operator)."""
    try:
        verify_version(model_dir / name / version, load_public_key(public_key))
    except ArtifactError as exc:
        raise ConfigError(
            f"{name}/{version} does not verify ({exc.reason}): {exc}; "
            "pass --no-verify to promote anyway"
        ) from exc


@app.command()
def promote(  # noqa: PLR0917 (typer maps options to parameters)
    model: Annotated[str, typer.Option("--model", help="Model name, e.g. fraud-gbt.")],
    version: Annotated[str, typer.Option("--version", help="Version, e.g. 2.")],
    role: Annotated[str, typer.Option("--role", help="primary|fallback|shadow|canary.")],
    share: Annotated[
        float, typer.Option("--share", min=0.0, max=1.0, help="Canary share of entities.")
    ] = 0.1,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept on the topic).")] = None,
    model_dir: Annotated[
        Path, typer.Option("--model-dir", help="Where to verify the version first.")
    ] = Path("models"),
    public_key: Annotated[Path, typer.Option("--public-key")] = Path("keys/signing.pub"),
    verify_first: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Verify the signature locally first.")
    ] = True,
) -> None:
    """Put a model version into a role on model.control; every scorer swaps to it."""
    if role not in ROLE_CHOICES:
        fail(f"--role must be one of {', '.join(ROLE_CHOICES)}, not {role!r}")
    _control(
        role=role, action="promote", name=model, version=version, reason=reason,
        share=share if role == "canary" else 0.0,
        check=(model_dir, public_key) if verify_first else None,
    )  # fmt: skip


@app.command()
def rollback(
    role: Annotated[str, typer.Option("--role", help="primary|fallback|shadow|canary.")] = (
        "primary"
    ),
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept on the topic).")] = None,
) -> None:
    """Promote again the version the role held before its last promotion."""
    if role not in ROLE_CHOICES:
        fail(f"--role must be one of {', '.join(ROLE_CHOICES)}, not {role!r}")
    _control(
        role=role, action="promote", name=None, version=None, share=0.0, reason=reason,
        check=None, previous_of=role,
    )  # fmt: skip


@app.command()
def clear(
    role: Annotated[str, typer.Option("--role", help="fallback|shadow|canary.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept on the topic).")] = None,
) -> None:
    """Empty a role (stop a shadow or canary); the primary cannot be cleared."""
    if role not in ROLE_CHOICES:
        fail(f"--role must be one of {', '.join(ROLE_CHOICES)}, not {role!r}")
    _control(
        role=role, action="clear", name=None, version=None, share=0.0, reason=reason, check=None
    )


@app.command()
def status() -> None:
    """What model.control says per role (JSON)."""
    from streamml.codec import AvroCodec

    try:
        kafka = _kafka()
        codec = AvroCodec.from_settings(kafka)
        state = _read_state(kafka, kafka.topic(TOPIC), codec, 30.0)
    except BrokerError as exc:
        fail(str(exc), code=1)
    except StreamMLError as exc:
        fail(str(exc))
    typer.echo(json.dumps(state, indent=2, sort_keys=True))
