"""The features CLI: training sets from Avro / JSON lines, describe, resume, bad arguments."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fastavro
import numpy as np
import pytest
from typer.testing import CliRunner

from services.features.cli import app
from services.features.feature_set import demo_feature_set
from services.features.offline import FeatureMatrix, build_matrix
from streamml.broker import free_port
from streamml.codec import AvroCodec
from streamml.synthetic import generate_events

runner = CliRunner()


def _pairs(n: int = 300) -> list[tuple[dict, int]]:
    return list(generate_events(n, seed=9, n_entities=30))


def test_build_from_jsonl_with_labels_equals_build_matrix(tmp_path: Path) -> None:
    pairs = _pairs()
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps({"event": e, "label": y}) + "\n" for e, y in pairs))
    out = tmp_path / "m.npz"
    result = runner.invoke(
        app, ["build-training-set", "--input", str(source), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["rows"] == 300 and summary["labels"] is True
    assert summary["feature_set_hash"] == demo_feature_set().content_hash
    loaded = FeatureMatrix.load(out)
    direct = build_matrix(e for e, _ in pairs)
    assert loaded.values.tobytes() == direct.values.tobytes()
    assert loaded.names == direct.names and loaded.event_ids == direct.event_ids
    assert loaded.categories == direct.categories
    assert loaded.labels is not None
    assert list(loaded.labels) == [y for _, y in pairs]
    assert np.array_equal(loaded.event_times, direct.event_times)


def test_build_from_an_avro_container_file(tmp_path: Path) -> None:
    pairs = _pairs(120)
    schema = AvroCodec().definition("Event")
    source = tmp_path / "events.avro"
    with source.open("wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(schema), [e for e, _ in pairs])
    out = tmp_path / "m.npz"
    result = runner.invoke(app, ["build-training-set", "-i", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    loaded = FeatureMatrix.load(out)
    assert loaded.values.tobytes() == build_matrix(e for e, _ in pairs).values.tobytes()
    assert loaded.labels is None


@pytest.mark.parametrize(
    ("setup", "args", "words"),
    [
        (None, ["--input", "{tmp}/missing.jsonl", "--output", "{tmp}/m.npz"], "does not exist"),
        ("x.jsonl", ["--input", "{tmp}/x.jsonl", "--output", "{tmp}/m.csv"], "must end in .npz"),
        ("x.csv", ["--input", "{tmp}/x.csv", "--output", "{tmp}/m.npz"], "unknown input format"),
        ("bad.jsonl", ["--input", "{tmp}/bad.jsonl", "--output", "{tmp}/m.npz"], "bad.jsonl:2"),
        (
            "x.jsonl",
            ["-i", "{tmp}/x.jsonl", "-o", "{tmp}/m.npz", "--allowed-lateness-ms", "9999999"],
            "shorter than the shortest window",
        ),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    tmp_path: Path, setup: str | None, args: list[str], words: str
) -> None:
    if setup:
        (tmp_path / setup).write_text('{"event_id": "a"}\nnot json\n')
    result = runner.invoke(app, ["build-training-set", *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]


def test_describe_prints_the_feature_set() -> None:
    result = runner.invoke(app, ["describe"])
    assert result.exit_code == 0
    described = json.loads(result.output)
    assert described["hash"] == demo_feature_set().content_hash
    assert described["names"] == list(demo_feature_set().names)


@pytest.fixture
def fake_instance() -> Iterator[tuple[str, list[str]]]:
    calls: list[str] = []
    halted = {"value": True}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append(self.path)
            code = 200 if halted["value"] else 409
            halted["value"] = False
            body = json.dumps({"resumed": code == 200}).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()


def test_resume_posts_to_the_instance(fake_instance: tuple[str, list[str]]) -> None:
    url, calls = fake_instance
    first = runner.invoke(app, ["resume", "--url", url])
    assert first.exit_code == 0 and first.output.startswith("resumed")
    second = runner.invoke(app, ["resume", "--url", url + "/"])
    assert second.exit_code == 0 and "not halted" in second.output
    assert calls == ["/resume", "/resume"]


def test_resume_bad_url_exits_2_unreachable_exits_1() -> None:
    bad = runner.invoke(app, ["resume", "--url", "localhost:9"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --url")
    down = runner.invoke(app, ["resume", "--url", f"http://127.0.0.1:{free_port()}"])
    assert down.exit_code == 1 and "cannot reach" in down.output
