"""Bad arguments: one line `error: ...` on stderr, exit code 2, and no broker contacted.

The bootstrap points at a closed port: a command that got past argument checking would
fail differently (a broker error, exit 1), so these tests also prove nothing was attempted.
"""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from streamml.ops.cli import confirm, register, run_one_line
from streamml.ops.common import UsageError

NO_BROKER = ["--bootstrap", "127.0.0.1:1"]


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()
    register(root)
    return root


BAD = [
    (["replay", "events"], "give a range"),
    (["replay", "events", "--from-offset", "3"], "exactly one --partition"),
    (["replay", "events", "--from-offset", "3", "-p", "0", "--from-time", "-1h"], "not both"),
    (["replay", "events", "-p", "0", "--from-offset", "9", "--to-offset", "9"], "empty range"),
    (["replay", "events", "--from-time", "-1h", "--to-time", "-2h"], "empty range"),
    (["replay", "events", "--from-time", "2026-11-22T03:00"], "no timezone"),
    (["replay", "events", "--from-time", "1795375200"], "epoch seconds"),
    (["replay", "events", "--resume", "abc", "--from-time", "-1h"], "--resume"),
    (["dlq", "show", "events", "--offset", "3"], "needs --partition"),
    (["dlq", "redrive", "events", "--from-offset", "3"], "exactly one --partition"),
    (["dlq", "redrive", "events", "--from-time", "-1h", "--to-time", "-1h"], "empty range"),
    (["dlq", "redrive", "events", "--to-time", "soon"], "not a time"),
    (["offsets", "reset", "--topic", "events", "--to-earliest"], "--group or --service"),
    (["offsets", "reset", "--topic", "events", "--service", "features"], "exactly one of"),
    (
        ["offsets", "reset", "--topic", "events", "--service", "features", "--to-offset", "4"],
        "exactly one --partition",
    ),
    (
        ["offsets", "reset", "--topic", "events", "--group", "g", "--service", "s", "--to-latest"],
        "--group or --service",
    ),
    (["offsets", "show", "--topic", "events"], "--group or --service"),
    (["topics", "create", "no-such-topic"], "not declared"),
    (["topics", "describe", "no-such-topic"], "not declared"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_give_one_line_and_exit_2(
    app: typer.Typer, args: list[str], fragment: str
) -> None:
    result = CliRunner().invoke(app, [*args, *NO_BROKER])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: "), message
    assert "\n" not in message
    assert fragment in message
    assert result.stdout == ""


def test_bad_bootstrap_is_a_one_line_setting_error(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["topics", "describe", "--bootstrap", "no-port"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid setting")
    assert result.stderr.count("\n") == 1


def test_writing_without_a_terminal_needs_yes() -> None:
    with pytest.raises(UsageError, match="without --yes"):
        confirm("reset group g", yes=False)  # pytest's stdin is not a terminal
    confirm("reset group g", yes=True)


@pytest.mark.parametrize(
    "args",
    [["replay", "events", "--rate", "-1"], ["tail", "events", "--max", "0"], ["dlq", "nope"]],
)
def test_typer_type_errors_exit_2(app: typer.Typer, args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, *NO_BROKER])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["replay", "events", "--from-offset", "abc"], "Invalid value for '--from-offset'"),
        (["replay", "events", "--bogus"], "No such option: --bogus"),
        (["dlq", "nope"], "No such command 'nope'"),
        (["replay", "events"], "give a range"),
    ],
)
def test_run_one_line_makes_click_usage_errors_one_line(
    app: typer.Typer, args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_one_line(app, [*args, *NO_BROKER]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert fragment in captured.err


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "events", "--from-offset", "3"],
        ["replay", "events", "--from-offset", "x"],
        ["dlq", "redrive", "events", "--to-time", "tomorrow"],
        ["offsets", "reset", "--topic", "events", "--to-latest"],
        ["tail", "events", "--max", "-5"],
        ["topics", "create", "nope"],
    ],
)
def test_the_streamml_entry_point_gives_one_line_and_exit_2(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from streamml.cli import main

    with pytest.raises(SystemExit) as exited:
        main([*args, *NO_BROKER])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
