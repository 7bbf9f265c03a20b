"""Processes that fill the Kafka cache at once (test workers on a cold machine) take turns:
the one that waits finds the first one's jars and fetches nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from streamml import broker
from streamml.broker import cache_dir, cache_lock, fetch_kafka_jars


def test_a_fetch_waits_for_the_one_filling_the_cache_and_then_uses_its_jars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMML_CACHE_DIR", str(tmp_path))
    fetched: list[str] = []
    # A fetch that ran would need Maven: here it records itself instead.
    monkeypatch.setattr(broker, "_fetch_kafka_jars", lambda libs, quiet: fetched.append("mvn"))
    libs = cache_dir() / "libs"
    got: list[Path] = []
    with cache_lock(libs):  # the first process, still fetching
        waiting = threading.Thread(target=lambda: got.append(fetch_kafka_jars()), daemon=True)
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not got  # it waits for the lock, not for Maven
        libs.mkdir(parents=True)
        (libs / "kafka_2.13-x.jar").write_bytes(b"")
        (libs / broker._COMPLETE_MARKER).write_text("x")
    waiting.join(timeout=30)
    assert got == [libs] and fetched == []
