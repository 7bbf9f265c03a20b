"""Operator and data-science commands of the features service (``streamml features ...``).

* ``build-training-set`` - a feature matrix (``.npz``) from a file of events, computed by
  the same code as the running service (training/serving parity);
* ``describe`` - the feature set: name, version, content hash and ordered names;
* ``resume`` - lift a fail-stop halt of a running instance (``POST /resume``).

A bad argument prints one line ``error: ...`` and exits 2; an unreachable service exits 1.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from services.features.feature_set import demo_feature_set
from services.features.settings import FeaturesSettings
from streamml.commandline import command_group, fail
from streamml.errors import ConfigError
from streamml.settings import load_settings

app = command_group(
    "features",
    "Features service: training sets, feature set description, fail-stop resume.",
)


@app.command("build-training-set")
def build_training_set(
    input_path: Annotated[
        Path, typer.Option("--input", "-i", help="Events: .avro container file or .jsonl.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Feature matrix (.npz).")],
    allowed_lateness_ms: Annotated[
        int | None,
        typer.Option(help="Allowed lateness of the feature set (default: the service's setting)."),
    ] = None,
) -> None:
    """Turn a file of events into a feature matrix, exactly as the service would."""
    from services.features.offline import (
        build_matrix,
        read_events,
    )

    if output.suffix != ".npz":
        fail(f"--output {output}: must end in .npz")
    if not output.parent.is_dir():
        fail(f"--output {output}: directory {output.parent} does not exist")
    try:
        lateness = allowed_lateness_ms
        if lateness is None:
            lateness = load_settings(FeaturesSettings).allowed_lateness_ms
        try:
            feature_set = demo_feature_set(allowed_lateness_ms=lateness)
        except ValueError as exc:
            fail(f"--allowed-lateness-ms {lateness}: {exc}")
        labels: dict[str, int] = {}

        def events() -> Iterator[dict[str, Any]]:
            for event, label in read_events(input_path):
                if label is not None and isinstance(event.get("event_id"), str):
                    labels[event["event_id"]] = label
                yield event

        matrix = build_matrix(events(), feature_set=feature_set)
        if labels and len(matrix):
            matrix.attach_labels(labels)
        matrix.save(output)
    except ConfigError as exc:
        fail(str(exc))
    summary = {
        "output": str(output),
        "rows": len(matrix),
        "features": len(matrix.names),
        "rejected": len(matrix.rejected),
        "duplicates": matrix.duplicates,
        "labels": matrix.labels is not None,
        "feature_set": matrix.feature_set,
        "feature_set_version": matrix.feature_set_version,
        "feature_set_hash": matrix.feature_set_hash,
    }
    typer.echo(json.dumps(summary))


@app.command()
def describe(
    allowed_lateness_ms: Annotated[
        int | None, typer.Option(help="Allowed lateness (default: the service's setting).")
    ] = None,
) -> None:
    """Print the feature set (name, version, hash, ordered feature names) as JSON."""

    try:
        lateness = allowed_lateness_ms
        if lateness is None:
            lateness = load_settings(FeaturesSettings).allowed_lateness_ms
        fs = demo_feature_set(allowed_lateness_ms=lateness)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    typer.echo(
        json.dumps(
            {
                "name": fs.name,
                "version": fs.version,
                "hash": fs.content_hash,
                "allowed_lateness_ms": fs.allowed_lateness_ms,
                "names": list(fs.names),
                "definition": fs.definition(),
            },
            indent=2,
        )
    )


@app.command()
def resume(
    url: Annotated[
        str, typer.Option(help="Base URL of the instance's HTTP port, e.g. http://host:9100.")
    ],
    timeout_s: Annotated[float, typer.Option(min=0.1, help="Request timeout.")] = 5.0,
) -> None:
    """Lift a fail-stop halt: the instance resumes consuming (operator command)."""

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        fail(f"--url {url!r}: expected http://host:port")
    target = url.rstrip("/") + "/resume"
    request = urllib.request.Request(target, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
            code = response.status
    except urllib.error.HTTPError as exc:
        body, code = exc.read(), exc.code
    except (urllib.error.URLError, OSError) as exc:
        fail(f"cannot reach {target}: {getattr(exc, 'reason', exc)}", code=1)
    text = body.decode("utf-8", "replace").strip()
    if code == 200:
        typer.echo(f"resumed: {text}")
        return
    if code == 409:
        typer.echo(f"not halted, nothing to resume: {text}")
        return
    fail(f"{target} answered {code}: {text[:300]}", code=1)


if __name__ == "__main__":  # `python -m services.features.cli ...`
    app(prog_name="streamml features")
