"""Structured logs: fields passed with ``fields()`` are fields of the line in both formats."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from streamml.logs import configure_logging, fields


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _line(capsys: pytest.CaptureFixture[str], fmt: str) -> str:
    configure_logging("INFO", fmt, service="features")  # type: ignore[arg-type]
    logging.getLogger("streamml.runtime.loop").info(
        "dead letter",
        extra=fields(topic="t.events", partition=3, offset=17, reason="Decode", error="bad x=1"),
    )
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.usefixtures("restore_root")
def test_json_lines_carry_the_fields_as_top_level_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = json.loads(_line(capsys, "json"))
    assert set(line) == {"ts", "level", "logger", "service", "msg", "topic", "partition",
                         "offset", "reason", "error"}  # fmt: skip
    assert line["msg"] == "dead letter"  # the message is the event, not its values
    assert (line["topic"], line["partition"], line["offset"]) == ("t.events", 3, 17)
    assert isinstance(line["partition"], int)  # a number stays a number
    assert (line["level"], line["logger"], line["service"]) == (
        "info",
        "streamml.runtime.loop",
        "features",
    )


@pytest.mark.usefixtures("restore_root")
def test_kv_lines_render_the_fields_after_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    line = _line(capsys, "kv")
    assert line.endswith(
        'msg="dead letter" topic=t.events partition=3 offset=17 reason=Decode error="bad x=1"'
    ), line
    assert line.split(" ", 1)[1].startswith("level=info logger=streamml.runtime.loop")


@pytest.mark.usefixtures("restore_root")
def test_a_field_may_be_named_like_a_log_record_attribute(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("x").warning("created", extra=fields(name="t.events", filename="a.avsc"))
    line = json.loads(capsys.readouterr().err)
    assert (line["name"], line["filename"], line["logger"]) == ("t.events", "a.avsc", "x")


def test_a_field_may_not_replace_the_lines_own_keys() -> None:
    with pytest.raises(ValueError, match="'level' is one of the line's own keys"):
        fields(level="x")
