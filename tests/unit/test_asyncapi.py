"""docs/asyncapi.yaml is what `streamml asyncapi` generates, and the AsyncAPI parser
(npm's @asyncapi/parser with its Avro schema parser, installed by ``npm ci`` from
tools/asyncapi/package-lock.json and kept there) finds it valid."""

from __future__ import annotations

import copy
import fcntl
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamml.asyncapi import build_document, render
from streamml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "asyncapi.yaml"
TOOLS = ROOT / "tools" / "asyncapi"


def test_committed_document_is_current() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamml.cli", "asyncapi", "--check", str(DOC)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert DOC.read_text(encoding="utf-8") == render(build_document())


def test_check_fails_on_a_stale_document(tmp_path: Path) -> None:
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text(DOC.read_text().replace("Topic `predictions`", "Topic `preds`"))
    done = subprocess.run(
        [sys.executable, "-m", "streamml.cli", "asyncapi", "--check", str(stale)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {stale} is stale: run streamml asyncapi -o {stale}"
    ]


def test_every_topic_is_a_channel_with_the_prefix_and_its_schema() -> None:
    document = build_document()
    topics = yaml.safe_load((ROOT / "libs" / "streamml" / "topics.yaml").read_text())["topics"]
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {"{prefix}" + t for t in topics}
    predictions = document["channels"]["predictions"]
    message = document["components"]["messages"]["Prediction"]
    assert predictions["parameters"] == {"prefix": {"$ref": "#/components/parameters/prefix"}}
    schema = yaml.safe_load((ROOT / "schemas" / "prediction.avsc").read_text())
    assert message["payload"]["schema"] == schema
    assert "replay.id" in message["headers"]["properties"]
    dead = document["components"]["messages"]["EventDeadLetter"]["headers"]["properties"]
    assert {"dlq.error.class", "dlq.source.offset", "dlq.attempt"} <= set(dead)
    sends = {k for k, o in document["operations"].items() if o["action"] == "send"}
    assert "scorer_sends_predictions" in sends
    assert "consumers_receives_drift_alerts" in document["operations"]


def test_a_topic_without_contract_is_refused() -> None:
    text = (ROOT / "libs" / "streamml" / "topics.yaml").read_text()
    text = text.replace("topics:\n", "topics:\n  orphan: {}\n", 1)
    with pytest.raises(ConfigError, match="no contracts entry for orphan"):
        build_document(topics_yaml=text)


def _npm_installed() -> Path:
    """tools/asyncapi/node_modules, installed by ``npm ci`` once (then reused)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js 20 and npm are needed to validate docs/asyncapi.yaml"
    stamp = TOOLS / "node_modules" / ".package-lock.json"
    lock = TOOLS / "package-lock.json"
    # Two test workers on a fresh checkout ran `npm ci` in the same directory at once and
    # both failed (ENOTEMPTY, ENOENT: CI, 2026-12-06): one installs, the other waits.
    with lock.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=TOOLS, capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
    return Path(node)


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    node = _npm_installed()
    return subprocess.run(
        [str(node), str(TOOLS / "validate.js"), str(path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_document_is_valid_asyncapi() -> None:
    done = _validate(DOC)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid: 19 channels" in done.stdout


def _broken(document: dict[str, Any], tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_parser_rejects_a_broken_document(tmp_path: Path) -> None:
    # The validation can fail: a dangling reference, and a payload that is not Avro.
    dangling = copy.deepcopy(build_document())
    dangling["channels"]["predictions"]["messages"]["Prediction"]["$ref"] = (
        "#/components/messages/Nope"
    )
    done = _validate(_broken(dangling, tmp_path, "dangling.yaml"))
    assert done.returncode == 1, done.stdout
    not_avro = copy.deepcopy(build_document())
    not_avro["components"]["messages"]["Prediction"]["payload"]["schema"]["fields"][0]["type"] = (
        "strng"
    )
    done = _validate(_broken(not_avro, tmp_path, "not_avro.yaml"))
    assert done.returncode == 1, done.stdout
