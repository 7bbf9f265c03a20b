"""The soak's reader of where the machine's CPU went (benchmarks/hostcpu.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from benchmarks.hostcpu import TICKS, HostCpu, parse_pressure, parse_proc_stat

# As Linux 6.x writes them.
STAT = "cpu  4217493 1464 1123297 1858965 6525 0 127475 2518 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
PRESSURE = (
    "some avg10=61.20 avg60=58.01 avg300=55.44 total=1000000\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
)


def test_proc_stat_adds_nice_to_user_and_interrupts_to_system() -> None:
    assert parse_proc_stat(STAT) == {
        "user": 4217493 + 1464,
        "system": 1123297 + 0 + 127475,
        "iowait": 6525,
        "steal": 2518,
        "idle": 1858965,
    }


def test_proc_stat_of_an_old_kernel_counts_missing_fields_as_zero() -> None:
    assert parse_proc_stat("cpu  10 0 5 100\n")["steal"] == 0


def test_proc_stat_refuses_another_file() -> None:
    with pytest.raises(ValueError, match="all-CPU line"):
        parse_proc_stat("MemTotal: 1 kB\n")


def test_pressure_reads_the_some_line_not_the_full_one() -> None:
    assert parse_pressure(PRESSURE) == 1_000_000
    assert parse_pressure("full avg10=0.00 total=5\n") is None


def write(root: Path, stat: str, cpu_us: int | None, io_us: int | None) -> None:
    (root / "stat").write_text(stat)
    (root / "pressure").mkdir(exist_ok=True)
    for kind, total in (("cpu", cpu_us), ("io", io_us)):
        path = root / "pressure" / kind
        if total is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(f"some avg10=0 avg60=0 avg300=0 total={total}\nfull total=0\n")


def test_take_gives_cores_and_stall_shares_over_the_interval(tmp_path: Path) -> None:
    times = iter([100.0, 110.0])
    host = HostCpu(root=tmp_path, clock=lambda: next(times))
    write(tmp_path, "cpu  0 0 0 0 0 0 0 0\n", cpu_us=0, io_us=0)
    assert host.take() == {}  # the first call sets the baseline
    t = TICKS * 10  # ten seconds of one core, in ticks
    write(tmp_path, f"cpu  {t} {t // 2} {t // 4} {t // 4} 0 0 0 {t // 10}\n",
          cpu_us=6_000_000, io_us=500_000)  # fmt: skip
    figures = host.take()
    assert figures == {
        "user": 1.5, "system": 0.25, "iowait": 0.0, "steal": 0.1, "idle": 0.25,
        "cpu_stall": 0.6, "io_stall": 0.05,
    }  # fmt: skip


def test_a_figure_the_kernel_does_not_give_is_left_out(tmp_path: Path) -> None:
    times = iter([0.0, 10.0])
    host = HostCpu(root=tmp_path, clock=lambda: next(times))
    write(tmp_path, "cpu  0 0 0 0 0 0 0 0\n", cpu_us=None, io_us=None)
    host.take()
    write(tmp_path, f"cpu  {TICKS * 10} 0 0 0 0 0 0 0\n", cpu_us=None, io_us=None)
    figures = host.take()
    assert figures["user"] == 1.0
    assert "cpu_stall" not in figures and "io_stall" not in figures


def test_the_real_proc_gives_a_split_that_adds_up_to_the_cores() -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("not Linux")
    host = HostCpu()
    host.take()
    time.sleep(0.5)
    figures = host.take()
    total = sum(figures[k] for k in ("user", "system", "iowait", "steal", "idle"))
    # /proc/stat also counts guest time inside user; the split is per tick, so allow slack.
    assert total == pytest.approx(os.cpu_count() or 1, rel=0.25)
