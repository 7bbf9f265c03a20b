"""Pure parts of replay and offsets: argument checks, time parsing, plans, pacing."""

from __future__ import annotations

import pytest

from streamml.ops.common import UsageError, format_ms, parse_time
from streamml.ops.offsets import PartitionOffsets, ResetTarget
from streamml.ops.replay import (
    PartitionRange,
    RangeRequest,
    RateLimiter,
    ReplayPlan,
    check_range,
    replay_headers,
)

NOW = 1_795_375_200_000  # 2026-11-22T19:20:00Z


class TestParseTime:
    def test_iso_with_timezone(self) -> None:
        assert parse_time("2026-11-22T19:20:00Z", now=0) == NOW
        assert parse_time("2026-11-22T20:20:00+01:00", now=0) == NOW

    def test_epoch_ms_now_and_relative(self) -> None:
        assert parse_time(str(NOW), now=0) == NOW
        assert parse_time("now", now=NOW) == NOW
        assert parse_time("-90s", now=NOW) == NOW - 90_000
        assert parse_time("-15m", now=NOW) == NOW - 900_000
        assert parse_time("-2h", now=NOW) == NOW - 7_200_000
        assert parse_time("-1d", now=NOW) == NOW - 86_400_000

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ("2026-11-22T19:20:00", "no timezone"),
            ("1795375200", "epoch seconds"),
            ("yesterday", "not a time"),
            ("-2w", "not a time"),
        ],
    )
    def test_refuses_ambiguous_or_garbage(self, text: str, fragment: str) -> None:
        with pytest.raises(UsageError, match=fragment):
            parse_time(text, now=NOW, option="--from-time")

    def test_format_round_trip(self) -> None:
        assert format_ms(NOW) == "2026-11-22T19:20:00.000Z"
        assert parse_time(format_ms(NOW + 7), now=0) == NOW + 7
        assert format_ms(None) == "-"


class TestCheckRange:
    def test_valid_ranges(self) -> None:
        check_range(RangeRequest(from_offset=0, to_offset=1, partitions=(3,)))
        check_range(RangeRequest(from_offset=5, partitions=(0,)))
        check_range(RangeRequest(from_time=1, to_time=2))
        check_range(RangeRequest(from_time=1, partitions=(0, 1)))

    @pytest.mark.parametrize(
        ("request_", "fragment"),
        [
            (RangeRequest(), "give a range"),
            (RangeRequest(from_offset=1, from_time=2, partitions=(0,)), "not both"),
            (RangeRequest(to_offset=9, partitions=(0,)), "needs --from-offset"),
            (RangeRequest(from_offset=1, to_offset=9), "exactly one --partition"),
            (RangeRequest(from_offset=1, to_offset=9, partitions=(0, 1)), "exactly one"),
            (RangeRequest(from_offset=-1, partitions=(0,)), ">= 0"),
            (RangeRequest(from_offset=5, to_offset=5, partitions=(0,)), "empty range"),
            (RangeRequest(from_offset=6, to_offset=5, partitions=(0,)), "empty range"),
            (RangeRequest(to_time=5), "needs --from-time"),
            (RangeRequest(from_time=5, to_time=5), "empty range"),
        ],
    )
    def test_refusals(self, request_: RangeRequest, fragment: str) -> None:
        with pytest.raises(UsageError, match=fragment):
            check_range(request_)


def _plan(**kwargs: object) -> ReplayPlan:
    base: dict[str, object] = {
        "replay_id": "abc",
        "source": "p.events",
        "target": "p.events",
        "ranges": [PartitionRange(0, 10, 20), PartitionRange(2, 0, 5)],
    }
    base.update(kwargs)
    return ReplayPlan(**base)  # type: ignore[arg-type]


class TestReplayPlan:
    def test_time_window_is_half_open(self) -> None:
        plan = _plan(from_time=100, to_time=200)
        assert plan.in_time_range(100)
        assert plan.in_time_range(199)
        assert not plan.in_time_range(200)
        assert not plan.in_time_range(99)
        assert _plan().in_time_range(-1)

    def test_log_round_trip_keeps_progress(self) -> None:
        plan = _plan(from_time=100, to_time=None, progress={0: 15}, copied=5)
        back = ReplayPlan.from_log(plan.to_log())
        assert back.ranges == plan.ranges
        assert back.progress == {0: 15}
        assert back.copied == 5
        assert (back.from_time, back.to_time, back.done) == (100, None, False)

    def test_total_offsets_counts_what_is_left(self) -> None:
        assert _plan().total_offsets == 15
        assert _plan(progress={0: 18}).total_offsets == 7

    def test_headers_keep_originals_first_and_byte_identical(self) -> None:
        original = [("trace", b"\x00\xff"), ("trace", b"2")]
        headers = replay_headers(original, _plan(), 12, 0, 777)
        assert headers[:2] == original
        assert dict(headers[2:]) == {
            "replay.id": b"abc",
            "replay.source": b"p.events/0/12",
            "replay.at": b"777",
        }


class TestRateLimiter:
    def test_unlimited_never_waits(self) -> None:
        limiter = RateLimiter(0, clock=lambda: 0.0)
        assert all(limiter.delay() == 0 for _ in range(100))

    def test_paces_to_rate(self) -> None:
        now = [0.0]
        limiter = RateLimiter(10, clock=lambda: now[0])
        assert limiter.delay() == pytest.approx(0.1)
        now[0] = 1.0
        assert limiter.delay() == 0  # behind schedule: no wait
        now[0] = 0.25
        assert limiter.delay() == pytest.approx(0.05)  # the 3rd is due at 0.3 s


class TestResetTarget:
    def test_exactly_one_target(self) -> None:
        with pytest.raises(UsageError, match="exactly one of"):
            ResetTarget().check([0])
        with pytest.raises(UsageError, match="exactly one of"):
            ResetTarget(to_earliest=True, to_latest=True).check([0])
        ResetTarget(to_time=5).check([])

    def test_offset_needs_one_partition(self) -> None:
        with pytest.raises(UsageError, match="exactly one --partition"):
            ResetTarget(to_offset=5).check([])
        with pytest.raises(UsageError, match=">= 0"):
            ResetTarget(to_offset=-2).check([1])
        ResetTarget(to_offset=5).check([1])

    def test_lag_after(self) -> None:
        assert PartitionOffsets(0, 50, 10, 0, 60).lag_after == 50
        assert PartitionOffsets(0, -1, -1, 5, 60).lag_after == 55
