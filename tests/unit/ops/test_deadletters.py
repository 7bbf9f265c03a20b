"""Pure parts of the dead-letter tools: grouping, filters, the redrive plan, redriven bytes."""

from __future__ import annotations

import pytest

from streamml.deadletter import dead_letter_headers
from streamml.ops.common import UsageError
from streamml.ops.deadletters import (
    DeadLetter,
    RedriveFilter,
    group_dead_letters,
    parked_record,
    plan_redrive,
    redriven_record,
    source_topic_of,
)


def letter(
    offset: int,
    *,
    error_class: str = "validation.range",
    service: str = "features",
    stage: str = "validate",
    dead_at: int = 1_000,
    source_headers: list[tuple[str, bytes]] | None = None,
    partition: int = 0,
) -> DeadLetter:
    headers = dead_letter_headers(
        source_headers if source_headers is not None else [("trace", b"\x01\x02")],
        error_class=error_class,
        message="amount must be > 0",
        service=service,
        stage=stage,
        topic="p.events",
        partition=2,
        offset=40 + offset,
        source_timestamp_ms=500,
        now_ms=dead_at,
    )
    return DeadLetter(
        topic="p.events.dlq",
        partition=partition,
        offset=offset,
        timestamp_ms=dead_at,
        key=b"card-1",
        value=b"\xc3\x01payload",
        headers=tuple(headers),
    )


def test_source_topic_of() -> None:
    assert source_topic_of("prod.events.dlq") == "prod.events"
    with pytest.raises(UsageError, match="not a dead-letter topic"):
        source_topic_of("prod.events")
    with pytest.raises(UsageError):
        source_topic_of(".dlq")


def test_headers_are_read_from_the_contract() -> None:
    found = letter(3, dead_at=1234)
    assert (found.error_class, found.service, found.stage) == (
        "validation.range",
        "features",
        "validate",
    )
    assert found.attempt == 1
    assert found.dead_at == 1234
    assert found.source_partition == 2
    assert found.source_timestamp == 500
    assert found.log_key == "redrive/p.events.dlq/0/3"


def test_group_counts_pending_and_times() -> None:
    letters = [
        letter(0, dead_at=30),
        letter(1, dead_at=10),
        letter(2, error_class="decode", stage="decode", dead_at=20),
        letter(3, dead_at=50),
    ]
    groups = group_dead_letters(letters, {"redrive/p.events.dlq/0/1"})
    assert [(g.error_class, g.count, g.pending) for g in groups] == [
        ("validation.range", 3, 2),
        ("decode", 1, 1),
    ]
    assert (groups[0].first_time, groups[0].last_time) == (10, 50)
    assert groups[1].stage == "decode"


class TestRedriveFilter:
    def test_matches_class_service_and_half_open_time(self) -> None:
        selection = RedriveFilter(error_classes=("decode",), from_time=10, to_time=20)
        assert selection.matches(letter(0, error_class="decode", dead_at=10))
        assert not selection.matches(letter(0, error_class="decode", dead_at=20))
        assert not selection.matches(letter(0, error_class="decode", dead_at=9))
        assert not selection.matches(letter(0, dead_at=15))
        assert not RedriveFilter(services=("scorer",)).matches(letter(0))
        assert RedriveFilter().matches(letter(0))

    @pytest.mark.parametrize(
        ("selection", "fragment"),
        [
            (RedriveFilter(from_time=5, to_time=5), "empty range"),
            (RedriveFilter(from_offset=3), "exactly one --partition"),
            (RedriveFilter(from_offset=3, to_offset=3, partitions=(0,)), "empty range"),
            (RedriveFilter(from_offset=-3, partitions=(0,)), ">= 0"),
        ],
    )
    def test_refusals(self, selection: RedriveFilter, fragment: str) -> None:
        with pytest.raises(UsageError, match=fragment):
            selection.check()


def test_plan_sends_parks_and_skips() -> None:
    first = letter(0)
    retried = letter(1, source_headers=[("redrive.attempt", b"1")])  # failed twice: attempt 2
    exhausted = letter(2, source_headers=[("redrive.attempt", b"2")])  # attempt 3
    done = letter(3)
    other = letter(4, error_class="decode")
    plan = plan_redrive(
        [first, retried, exhausted, done, other],
        RedriveFilter(error_classes=("validation.range",)),
        {done.log_key},
        max_attempts=3,
        redrive_id="r1",
        dlq="p.events.dlq",
    )
    assert [d.offset for d in plan.send] == [0, 1]
    assert [d.offset for d in plan.park] == [2]
    assert (plan.already_handled, plan.not_matching) == (1, 1)
    assert retried.attempt == 2 and exhausted.attempt == 3


def test_redriven_record_is_byte_identical_with_redrive_headers() -> None:
    source = [("trace", b"\x01\x02"), ("replay.id", b"x"), ("redrive.attempt", b"1")]
    dead = letter(7, source_headers=source)
    record = redriven_record(dead, "p.events", 4, "r9", 999)
    assert (record.topic, record.key, record.value) == ("p.events", b"card-1", dead.value)
    assert record.partition == 2  # back where it came from
    assert record.timestamp_ms == 500  # the source record's timestamp
    headers = list(record.headers)
    # Original headers first, untouched; no dlq.* and no stale redrive.* left.
    assert headers[:2] == [("trace", b"\x01\x02"), ("replay.id", b"x")]
    assert dict(headers[2:]) == {
        "redrive.id": b"r9",
        "redrive.attempt": b"2",
        "redrive.source": b"p.events.dlq/0/7",
        "redrive.at": b"999",
    }
    assert not any(k.startswith("dlq.") for k, _ in headers)


def test_redriven_record_lets_the_partitioner_choose_when_partition_is_gone() -> None:
    assert redriven_record(letter(1), "p.events", 2, "r", 1).partition is None


def test_parked_record_keeps_the_dead_letter_as_is() -> None:
    dead = letter(5, partition=1)
    parked = parked_record(dead, "r2", 77)
    assert parked.topic == "p.events.dlq.parked"
    assert list(parked.headers)[: len(dead.headers)] == list(dead.headers)
    assert dict(list(parked.headers)[len(dead.headers) :]) == {
        "parked.at": b"77",
        "parked.by": b"r2",
    }
    assert (parked.partition, parked.value) == (1, dead.value)
