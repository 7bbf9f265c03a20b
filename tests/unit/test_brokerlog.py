"""The soak's reader of the broker's log-cleaner passes (benchmarks/brokerlog.py)."""

from __future__ import annotations

from datetime import datetime

import pytest

from benchmarks.brokerlog import (
    CleanerPass,
    cleaner_passes,
    seconds_per_interval,
    window_figures,
)

# As Kafka 3.9's broker writes them (log4j, the broker's local time).
HEADER = "INFO [kafka-log-cleaner-thread-0]: "  # the line ends in a space
LOG = [
    f"[2026-12-06 05:45:42,970] {HEADER}",
    "\tLog cleaner thread 0 cleaned log soak.performance-join-changelog-0 "
    "(dirty section = [0, 47177])",
    "\t1.9 MB of log processed in 0.2 seconds (9.8 MB/sec).",
    "\tIndexed 1.9 MB in 0.1 seconds (26.8 Mb/sec, 36.6% of total time)",
    "\tCleaned 1.9 MB in 0.1 seconds (15.5 Mb/sec, 63.4% of total time)",
    " (kafka.log.LogCleaner)",
    "[2026-12-06 05:45:42,978] INFO Cleaner 0: Beginning cleaning of log "
    "soak.drift-episodes-changelog-0 (kafka.log.LogCleaner)",
    f"[2026-12-06 05:45:43,100] {HEADER}",
    "\tLog cleaner thread 0 cleaned log soak.drift-episodes-changelog-0 (dirty section = [0, 90])",
    "\t0.0 MB of log processed in 0.0 seconds (0.5 MB/sec).",
    " (kafka.log.LogCleaner)",
    f"[2026-12-06 05:45:49,000] {HEADER}",
    "\tLog cleaner thread 0 cleaned log soak.features-dedup-changelog-1 (dirty section = [5, 9])",
    "\t18.4 MB of log processed in 3.5 seconds (5.3 MB/sec).",
    " (kafka.log.LogCleaner)",
    "[2026-12-06 05:45:50,000] INFO [kafka-log-cleaner-thread-0]: Starting (kafka.log.LogCleaner)",
]


def at(clock: str) -> float:
    return datetime.strptime(f"2026-12-06 {clock}", "%Y-%m-%d %H:%M:%S.%f").timestamp()


def test_every_completed_pass_is_read_with_its_log_size_and_time() -> None:
    passes = cleaner_passes(LOG)
    assert passes == [
        CleanerPass(at("05:45:42.970"), "soak.performance-join-changelog-0", 1.9, 0.2),
        CleanerPass(at("05:45:43.100"), "soak.drift-episodes-changelog-0", 0.0, 0.0),
        CleanerPass(at("05:45:49.000"), "soak.features-dedup-changelog-1", 18.4, 3.5),
    ]


def test_a_pass_is_split_between_the_intervals_it_spans() -> None:
    passes = cleaner_passes(LOG)
    # Intervals of 10 s ending at :40, :47 (7 s) and :50: the last pass ran :45.5-:49.
    ends = [at("05:45:40.0"), at("05:45:47.0"), at("05:45:57.0")]
    cleaning = seconds_per_interval(passes, ends, 10.0)
    assert cleaning[0] == 0.0
    assert cleaning[1] == pytest.approx(0.2 + 1.5)  # the join pass, and :45.5-:47
    assert cleaning[2] == pytest.approx(2.0)  # :47-:49


def test_a_window_says_how_long_the_cleaner_ran_and_its_longest_burst() -> None:
    assert window_figures([0.5, 0.0, 4.5, 1.0, 0.0, 0.0], 10.0) == {
        "seconds_per_min": 6.0,
        "max_in_interval_s": 4.5,
        "intervals_over_2s": 1,
    }
    assert window_figures([], 10.0) is None
