"""The operator commands, mounted on the project's root typer app by :func:`register`.

``replay``, ``dlq list|show|redrive``, ``offsets show|reset``, ``tail``, ``topics
create|describe``. Conventions for every command: topic names are logical (the prefix
from ``--prefix`` / ``STREAMML_KAFKA_TOPIC_PREFIX`` goes before them and the physical name
is printed); anything that writes has ``--dry-run`` and asks for confirmation (``--yes``
skips it; without a terminal ``--yes`` is required); a bad argument prints one line
``error: ...`` on stderr and exits 2 with nothing changed; a broker failure exits 1.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from typer._click import exceptions as click_errors  # typer vendors click (0.29+)

from streamml.commandline import exit_error as fail
from streamml.deadletter import DLQ_SUFFIX, H_SOURCE_TOPIC
from streamml.errors import ConfigError, StreamMLError
from streamml.ops import deadletters, offsets, replay, tail, topics_cmd
from streamml.ops.common import (
    UsageError,
    admin_client,
    format_ms,
    header,
    header_text,
    kafka_settings,
    now_ms,
    parse_time,
    partitions_of,
    read_log,
    select_partitions,
)
from streamml.ops.decoding import (
    ValueDecoder,
    decode_value,
    hex_preview,
    jsonable,
    key_text,
    load_codec,
)
from streamml.ops.settings import OpsSettings
from streamml.ops.txn import TransactionalWriter
from streamml.settings import KafkaSettings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE = 2
EXIT_FAILED = 1

# Piped output (logs, tickets, tests) gets wide tables instead of 80 truncated columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)

Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        help="Kafka host:port list. Default: STREAMML_KAFKA_BOOTSTRAP_SERVERS / "
        "KAFKA_BOOTSTRAP_SERVERS / 127.0.0.1:9092.",
        show_default=False,
    ),
]
Prefix = Annotated[
    str | None,
    typer.Option(
        "--prefix",
        help="Topic prefix put before every topic name. Default: STREAMML_KAFKA_TOPIC_PREFIX.",
        show_default=False,
    ),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Partitions = Annotated[
    list[int] | None,
    typer.Option("--partition", "-p", help="Partition to work on (repeatable). Default: all."),
]
FromTime = Annotated[
    str | None,
    typer.Option(
        "--from-time",
        help="First time, included: ISO 8601 with timezone, epoch ms, 'now' or -2h/-30m/-1d.",
    ),
]
ToTime = Annotated[
    str | None, typer.Option("--to-time", help="End time, excluded (same formats as --from-time).")
]
FromOffset = Annotated[
    int | None, typer.Option("--from-offset", help="First offset, included (needs one -p).")
]
ToOffset = Annotated[
    int | None, typer.Option("--to-offset", help="End offset, excluded (needs one -p).")
]


def operator_command(func: F) -> F:
    """Map project errors to one line and an exit code: usage/config 2, broker/other 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        except StreamMLError as exc:
            raise fail(str(exc), EXIT_FAILED) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]


def confirm(action: str, yes: bool) -> None:
    """Ask before writing; refuse without a terminal unless ``--yes`` was given."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {action} without --yes (no terminal to confirm on)")
    if not typer.confirm(f"{action}?", default=False):
        err.print("aborted: nothing changed")
        raise typer.Exit(EXIT_FAILED)


def _time(value: str | None, option: str, now: int) -> int | None:
    return None if value is None else parse_time(value, now=now, option=option)


def _ops_settings() -> OpsSettings:
    return load_settings(OpsSettings)


# ---------------------------------------------------------------------------- replay


class RateColumn(ProgressColumn):
    """Records per second (offsets walked per second: equal but for transaction markers)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- rec/s" if speed is None else f"{speed:,.0f} rec/s")


@operator_command
def replay_command(
    *,
    topic: Annotated[str, typer.Argument(help="Source topic (logical name).")],
    target: Annotated[
        str | None, typer.Option("--target", help="Target topic. Default: the source topic.")
    ] = None,
    partition: Partitions = None,
    from_offset: FromOffset = None,
    to_offset: ToOffset = None,
    from_time: FromTime = None,
    to_time: ToTime = None,
    rate: Annotated[
        float, typer.Option("--rate", min=0, help="Most records per second; 0 = no limit.")
    ] = 0.0,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue an interrupted replay by its id (no range)."),
    ] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Copy an offset or time range of a topic into a target topic, with replay.* headers.

    Ranges are half-open: --from-* included, --to-* excluded. Copies are byte-identical and
    transactional: after a crash, `--resume <id>` continues without duplicates.
    """
    kafka = kafka_settings(bootstrap, prefix)
    ops = _ops_settings()
    now = now_ms()
    if resume is not None:
        given = [from_offset, to_offset, from_time, to_time, target, partition or None]
        if any(v is not None for v in given):
            raise UsageError("--resume continues a stored plan; give no range, --target or -p")
        plan = replay.load_plan(kafka, resume, ops)
        if plan.source != kafka.topic(topic):
            raise UsageError(
                f"replay {resume} copies from {plan.source}, not {kafka.topic(topic)}; "
                "check the id and --prefix"
            )
        if plan.done:
            out.print(
                f"replay {plan.replay_id} already completed ({plan.copied} records); nothing to do"
            )
            return
    else:
        request = replay.RangeRequest(
            from_offset=from_offset,
            to_offset=to_offset,
            from_time=_time(from_time, "--from-time", now),
            to_time=_time(to_time, "--to-time", now),
            partitions=tuple(partition or ()),
        )
        replay.check_range(request)
        plan = replay.make_plan(kafka, kafka.topic(topic), kafka.topic(target or topic), request)
    _print_plan(plan)
    if dry_run:
        summaries = replay.survey(kafka, plan, ops)
        _print_summaries("would copy", summaries)
        total = sum(s.records for s in summaries)
        out.print(
            f"dry run: would copy {total} records from {plan.source} to {plan.target}; "
            "nothing written"
        )
        if total == 0:
            raise UsageError("empty range: no record inside it; nothing to replay")
        return
    confirm(f"copy {plan.total_offsets} offsets from {plan.source} to {plan.target}", yes)
    if resume is None:
        writer = replay.start(kafka, plan, ops)
    else:
        # Fence any other run of this replay first, then re-read its progress: whatever
        # that run committed is seen, so nothing is copied twice.
        writer = TransactionalWriter(kafka, f"streamml-ops-replay-{plan.replay_id}")
        plan = replay.load_plan(kafka, plan.replay_id, ops)
    again = f" --prefix {prefix}" if prefix else ""
    err.print(
        f"replay id {plan.replay_id}; if interrupted: streamml replay {topic} "
        f"--resume {plan.replay_id}{again}"
    )
    columns = (
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.fields[copied]} copied"),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("replay", total=plan.total_offsets, copied=0)
        copied = plan.copied

        def advance(offsets: int, records: int) -> None:
            nonlocal copied
            copied += records
            progress.update(task, advance=offsets, copied=copied)

        summaries = replay.execute(kafka, plan, ops, writer, rate=rate, on_progress=advance)
    _print_summaries("copied", summaries)
    out.print(
        f"done: copied {plan.copied} records from {plan.source} to {plan.target} "
        f"(replay id {plan.replay_id})"
    )


def _print_plan(plan: Any) -> None:
    table = Table(title=f"replay {plan.source} -> {plan.target}", title_justify="left")
    for column in ("partition", "from offset", "to offset (excl.)"):
        table.add_column(column, justify="right")
    for part in plan.ranges:
        start = plan.progress.get(part.partition, part.start)
        table.add_row(str(part.partition), str(start), str(part.end))
    out.print(table)
    if plan.from_time is not None:
        out.print(f"time range: [{format_ms(plan.from_time)}, {format_ms(plan.to_time)})")


def _print_summaries(verb: str, summaries: list[Any]) -> None:
    table = Table(title=verb, title_justify="left")
    for column in (
        "partition",
        "records",
        "first offset",
        "last offset",
        "first time",
        "last time",
        "skipped (time)",
    ):
        table.add_column(column, justify="right")
    for s in summaries:
        table.add_row(
            str(s.partition),
            str(s.records),
            str(s.first_offset if s.records else "-"),
            str(s.last_offset if s.records else "-"),
            format_ms(s.first_time),
            format_ms(s.last_time),
            str(s.skipped),
        )
    out.print(table)


# ---------------------------------------------------------------------------- dlq

dlq_app = typer.Typer(help="Dead letters: list, show, redrive.", no_args_is_help=True)


def _dlq_name(kafka: KafkaSettings, name: str) -> str:
    logical = name if name.endswith(DLQ_SUFFIX) else name + DLQ_SUFFIX
    return kafka.topic(logical)


DlqTopic = Annotated[
    str, typer.Argument(help="Dead-letter topic, e.g. events.dlq (or its source: events).")
]


@dlq_app.command("list")
@operator_command
def dlq_list(
    *,
    topic: DlqTopic,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Dead letters grouped by error class, service and stage, with counts and times."""
    kafka = kafka_settings(bootstrap, prefix)
    ops = _ops_settings()
    dlq = _dlq_name(kafka, topic)
    handled = set(read_log(kafka, kafka.topic(ops.log_topic), idle_timeout_s=ops.idle_timeout_s))
    groups = deadletters.group_dead_letters(deadletters.read_dead_letters(kafka, dlq, ops), handled)
    if not groups:
        out.print(f"{dlq}: no dead letters")
        return
    table = Table(title=dlq, title_justify="left")
    for column in (
        "error class",
        "service",
        "stage",
        "count",
        "pending",
        "max attempt",
        "first",
        "last",
        "example message",
    ):
        table.add_column(column, justify="right" if column in ("count", "pending") else "left")
    for g in groups:
        table.add_row(
            g.error_class,
            g.service,
            g.stage,
            str(g.count),
            str(g.pending),
            str(g.max_attempt),
            format_ms(g.first_time),
            format_ms(g.last_time),
            g.example_message[:80],
        )
    out.print(table)
    out.print(
        f"total {sum(g.count for g in groups)}, pending {sum(g.pending for g in groups)} "
        "(not yet redriven or parked)"
    )


@dlq_app.command("show")
@operator_command
def dlq_show(
    *,
    topic: DlqTopic,
    partition: Annotated[
        int | None, typer.Option("--partition", "-p", help="DLQ partition.")
    ] = None,
    offset: Annotated[int | None, typer.Option("--offset", help="DLQ offset (needs -p).")] = None,
    error_class: Annotated[
        list[str] | None, typer.Option("--error-class", help="Only this error class (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most dead letters shown.")] = 5,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Dead letters with every header and their payload decoded when possible."""
    if offset is not None and partition is None:
        raise UsageError("--offset needs --partition (offsets are per partition)")
    if offset is not None and offset < 0:
        raise UsageError(f"--offset must be >= 0 (got {offset})")
    kafka = kafka_settings(bootstrap, prefix)
    ops = _ops_settings()
    dlq = _dlq_name(kafka, topic)
    codec = _codec_or_none(kafka)
    letters = deadletters.read_dead_letters(
        kafka,
        dlq,
        ops,
        partitions=() if partition is None else (partition,),
        from_offset=offset,
        to_offset=None if offset is None else offset + 1,
    )
    shown = 0
    for letter in letters:
        if error_class and letter.error_class not in error_class:
            continue
        out.rule(f"{dlq}[{letter.partition}] offset {letter.offset}")
        out.print(
            f"dead at {format_ms(letter.dead_at)}  attempt {letter.attempt}  "
            f"{letter.error_class} in {letter.service}/{letter.stage}"
        )
        for name, value in letter.headers:
            out.print(f"  {name}: {header_text(value)}")
        out.print(f"key: {key_text(letter.key)}")
        source = header_text(header(letter.headers, H_SOURCE_TOPIC)) or dlq
        decoded = decode_value(codec, letter.value, source)
        if decoded.error is None:
            out.print(f"value ({decoded.schema}):")
            out.print(json.dumps(jsonable(decoded.value), indent=2, ensure_ascii=False))
        else:
            out.print(
                f"value not decodable ({decoded.error}); "
                f"{len(letter.value or b'')} bytes: {hex_preview(letter.value)}"
            )
        shown += 1
        if shown >= limit:
            break
    if shown == 0:
        where = f" at {partition}/{offset}" if offset is not None else ""
        raise UsageError(f"no dead letter in {dlq}{where} matches")


def _codec_or_none(kafka: KafkaSettings) -> ValueDecoder | None:
    try:
        return load_codec(kafka)
    except (ImportError, StreamMLError) as exc:
        err.print(f"warning: values shown as hex, no Avro codec: {exc}")
        return None


@dlq_app.command("redrive")
@operator_command
def dlq_redrive(
    *,
    topic: DlqTopic,
    error_class: Annotated[
        list[str] | None, typer.Option("--error-class", help="Only this error class (repeatable).")
    ] = None,
    service: Annotated[
        list[str] | None, typer.Option("--service", help="Only from this service (repeatable).")
    ] = None,
    from_time: FromTime = None,
    to_time: ToTime = None,
    partition: Partitions = None,
    from_offset: FromOffset = None,
    to_offset: ToOffset = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            min=1,
            help="Park instead of redrive at this dlq.attempt. "
            "Default: STREAMML_OPS_REDRIVE_MAX_ATTEMPTS (3).",
        ),
    ] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Send dead letters back to their source topic after a fix (or park them).

    Byte-identical with redrive.* headers; at --max-attempts a dead letter goes to
    <dlq>.parked instead. Idempotent: a dead letter already sent or parked is skipped.
    Times filter on when the record was dead-lettered, half-open.
    """
    kafka = kafka_settings(bootstrap, prefix)
    ops = _ops_settings()
    now = now_ms()
    selection = deadletters.RedriveFilter(
        error_classes=tuple(error_class or ()),
        services=tuple(service or ()),
        from_time=_time(from_time, "--from-time", now),
        to_time=_time(to_time, "--to-time", now),
        partitions=tuple(partition or ()),
        from_offset=from_offset,
        to_offset=to_offset,
    )
    selection.check()
    dlq = _dlq_name(kafka, topic)
    limit = max_attempts or ops.redrive_max_attempts
    plan = deadletters.prepare_redrive(kafka, dlq, selection, ops, max_attempts=limit)
    source = deadletters.source_topic_of(dlq)
    table = Table(title=f"redrive {dlq} -> {source}", title_justify="left")
    for column in ("error class", "send back", f"park (attempt >= {limit})"):
        table.add_column(column, justify="left" if column == "error class" else "right")
    classes = sorted({d.error_class for d in plan.send + plan.park})
    for name in classes:
        table.add_row(
            name,
            str(sum(d.error_class == name for d in plan.send)),
            str(sum(d.error_class == name for d in plan.park)),
        )
    out.print(table)
    out.print(
        f"skipped: {plan.already_handled} already redriven or parked, "
        f"{plan.not_matching} not matching the filters"
    )
    if not plan.send and not plan.park:
        out.print("nothing to redrive")
        return
    if dry_run:
        out.print(
            f"dry run: would send {len(plan.send)} to {source} and park {len(plan.park)} "
            f"in {dlq}.parked; nothing written"
        )
        return
    confirm(f"send {len(plan.send)} dead letters to {source} and park {len(plan.park)}", yes)
    sent, parked = deadletters.execute_redrive(kafka, plan, ops)
    out.print(
        f"done: sent {sent} to {source}, parked {parked} in {dlq}.parked "
        f"(redrive id {plan.redrive_id})"
    )


# ---------------------------------------------------------------------------- offsets

offsets_app = typer.Typer(help="Consumer group offsets: show, reset.", no_args_is_help=True)

Group = Annotated[str | None, typer.Option("--group", help="Consumer group id (exact).")]
Service = Annotated[
    str | None, typer.Option("--service", help="Service name; the group is <prefix><service>.")
]
Topic = Annotated[str, typer.Option("--topic", help="Input topic of the group (logical name).")]


def _group(kafka: KafkaSettings, group: str | None, service: str | None) -> str:
    if (group is None) == (service is None):
        raise UsageError("give exactly one of --group or --service")
    return group if group is not None else kafka.topic(service or "")


def _offsets_table(title: str, rows: list[Any], *, changed: bool) -> Table:
    table = Table(title=title, title_justify="left")
    columns = ["partition", "before", "after", "log start", "log end", "to process"]
    if not changed:
        columns = ["partition", "committed", "log start", "log end", "lag"]
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        before = "none" if row.before < 0 else str(row.before)
        if changed:
            table.add_row(
                str(row.partition),
                before,
                str(row.after),
                str(row.low),
                str(row.high),
                str(row.lag_after),
            )
        else:
            table.add_row(
                str(row.partition), before, str(row.low), str(row.high), str(row.lag_after)
            )
    return table


@offsets_app.command("show")
@operator_command
def offsets_show(
    *,
    topic: Topic,
    group: Group = None,
    service: Service = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Committed offsets and lag of a group on a topic, and its active members."""
    kafka = kafka_settings(bootstrap, prefix)
    group_id = _group(kafka, group, service)
    members, rows = offsets.show(kafka, group_id, kafka.topic(topic))
    out.print(_offsets_table(f"group {group_id} on {kafka.topic(topic)}", rows, changed=False))
    out.print(f"active members: {', '.join(members) if members else 'none'}")


@offsets_app.command("reset")
@operator_command
def offsets_reset(
    *,
    topic: Topic,
    group: Group = None,
    service: Service = None,
    partition: Partitions = None,
    to_time: Annotated[
        str | None, typer.Option("--to-time", help="First offset with timestamp >= this time.")
    ] = None,
    to_offset: Annotated[
        int | None, typer.Option("--to-offset", help="This offset (needs one -p).")
    ] = None,
    to_earliest: Annotated[bool, typer.Option("--to-earliest", help="The log start.")] = False,
    to_latest: Annotated[bool, typer.Option("--to-latest", help="The log end (skip all).")] = False,
    dry_run: DryRun = False,
    yes: Yes = False,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Move a stopped service's consumer group to a time or offset to reprocess records.

    Refused while the group has active members. Prints before/after per partition.
    """
    kafka = kafka_settings(bootstrap, prefix)
    target = offsets.ResetTarget(
        to_time=_time(to_time, "--to-time", now_ms()),
        to_offset=to_offset,
        to_earliest=to_earliest,
        to_latest=to_latest,
    )
    target.check(partition or ())
    group_id = _group(kafka, group, service)
    physical = kafka.topic(topic)
    members = offsets.active_members(admin_client(kafka), group_id)
    if members and not dry_run:
        raise UsageError(
            f"group {group_id!r} has {len(members)} active member(s) ({', '.join(members[:3])}); "
            "stop the service first, then reset"
        )
    rows = offsets.plan_reset(kafka, group_id, physical, target, partition or ())
    out.print(_offsets_table(f"reset group {group_id} on {physical}", rows, changed=True))
    if dry_run:
        if members:
            out.print(
                f"note: the group has active members ({', '.join(members[:3])}); "
                "a real reset would be refused"
            )
        out.print("dry run: offsets unchanged")
        return
    confirm(f"reset group {group_id} on {physical} ({len(rows)} partitions)", yes)
    offsets.apply_reset(kafka, group_id, physical, rows)
    _, now_rows = offsets.show(kafka, group_id, physical)
    after = {r.partition: r.before for r in now_rows}
    moved = ", ".join(
        f"{r.partition}: {r.before if r.before >= 0 else 'none'} -> {after.get(r.partition)}"
        for r in rows
    )
    out.print(f"done: group {group_id} now at {moved}")


# ---------------------------------------------------------------------------- tail


@operator_command
def tail_command(
    *,
    topic: Annotated[str, typer.Argument(help="Topic to follow (logical name).")],
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest record, not the end.")
    ] = False,
    max_records: Annotated[
        int | None, typer.Option("--max", min=1, help="Stop after this many records.")
    ] = None,
    partition: Partitions = None,
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", min=0.1, help="Stop after this many seconds without records."),
    ] = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Print records as JSON lines: topic, partition, offset, key, headers, decoded value."""
    kafka = kafka_settings(bootstrap, prefix)
    physical = kafka.topic(topic)
    chosen = select_partitions(partitions_of(admin_client(kafka), physical), partition, physical)
    codec = _codec_or_none(kafka)
    options = tail.TailOptions(
        topic=physical,
        partitions=tuple(chosen),
        from_beginning=from_beginning,
        max_records=max_records,
        idle_exit_s=idle_exit,
    )

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        tail.run_tail(kafka, options, codec, emit, chosen)
    except KeyboardInterrupt:
        return  # Ctrl-C is how one stops following: not an error


# ---------------------------------------------------------------------------- topics

topics_app = typer.Typer(
    help="Declared topics (topics.yaml): create, describe.", no_args_is_help=True
)
TopicNames = Annotated[
    list[str] | None, typer.Argument(help="Logical names from topics.yaml. Default: all.")
]


@topics_app.command("create")
@operator_command
def topics_create(
    *,
    names: TopicNames = None,
    dry_run: DryRun = False,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Create every declared topic that is missing (idempotent; existing ones untouched)."""
    kafka = kafka_settings(bootstrap, prefix)
    specs = topics_cmd.declared(kafka, names or ())
    statuses = topics_cmd.create(kafka, specs, dry_run=dry_run)
    _print_topics(statuses)
    created = sum(s.status == "created" for s in statuses)
    if dry_run:
        out.print(f"dry run: would create {sum(s.status == 'would create' for s in statuses)}")
    else:
        out.print(f"done: created {created}, already there {len(statuses) - created}")


@topics_app.command("describe")
@operator_command
def topics_describe(
    *,
    names: TopicNames = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Partitions, replicas and key configs of the declared topics, with differences."""
    kafka = kafka_settings(bootstrap, prefix)
    specs = topics_cmd.declared(kafka, names or ())
    _print_topics(topics_cmd.describe(kafka, specs))


def _print_topics(statuses: list[Any]) -> None:
    table = Table()
    for column in ("topic", "status", "partitions", "replicas", "config", "note"):
        table.add_column(column)
    for s in statuses:
        config = ", ".join(f"{k}={v}" for k, v in sorted(s.config.items()))
        table.add_row(
            s.name,
            s.status,
            "" if s.partitions is None else str(s.partitions),
            "" if s.replicas is None else str(s.replicas),
            config,
            s.note,
        )
    out.print(table)


# ---------------------------------------------------------------------------- wiring


def register(app: typer.Typer) -> None:
    """Add the operator commands to the project's root typer app."""
    app.command("replay", no_args_is_help=True)(replay_command)
    app.command("tail", no_args_is_help=True)(tail_command)
    app.add_typer(dlq_app, name="dlq")
    app.add_typer(offsets_app, name="offsets")
    app.add_typer(topics_app, name="topics")


def run_one_line(app: typer.Typer, args: Sequence[str] | None = None) -> int:
    """Run ``app`` so that typer/click usage errors are one ``error: ...`` line too (exit 2).

    For the root CLI's ``main()``: click's own usage errors (an option that is not an
    integer, an unknown option) otherwise print a multi-line usage box.
    """
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=list(args) if args is not None else None,
            prog_name="streamml",
            standalone_mode=False,
        )
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()
        return EXIT_USAGE
    except click_errors.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
        typer.echo(f"error: {where}{' '.join(exc.format_message().split())}", err=True)
        return EXIT_USAGE
    except typer.Abort:
        typer.echo("aborted: nothing changed", err=True)
        return EXIT_FAILED
    except click_errors.ClickException as exc:
        typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code
    return result if isinstance(result, int) else 0
