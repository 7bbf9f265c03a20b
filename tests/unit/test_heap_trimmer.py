"""HeapTrimmer trims when the RSS has grown by its share since the last trim, not more often."""

from __future__ import annotations

from typing import Any

import pytest

from streamml.memory import HeapTrimmer, heap_bytes


class _Process:
    """A test double of the process: an RSS that the test sets and a trim that lowers it."""

    def __init__(self, rss: int) -> None:
        self.rss = rss
        self.after_trim = rss
        self.trims = 0
        self.now = 0.0

    def trim(self) -> bool:
        self.trims += 1
        self.rss = self.after_trim
        return True


def _trimmer(process: _Process, **kwargs: float) -> HeapTrimmer:
    return HeapTrimmer(
        growth=kwargs.get("growth", 0.2),
        check_interval_s=kwargs.get("check_interval_s", 30.0),
        min_interval_s=kwargs.get("min_interval_s", 300.0),
        rss=lambda: process.rss,
        trim=process.trim,
        clock=lambda: process.now,
    )


def test_a_step_of_the_rss_is_trimmed_and_the_baseline_is_the_rss_after_the_trim() -> None:
    process = _Process(rss=100)
    trimmer = _trimmer(process)
    assert trimmer.maybe_trim() is None  # baseline 100
    process.now, process.rss, process.after_trim = 400.0, 119, 80
    assert trimmer.maybe_trim() is None  # under 20 % growth
    process.now, process.rss = 430.0, 121
    assert trimmer.maybe_trim() == (121, 80)
    assert process.trims == 1
    process.now, process.rss = 760.0, 97  # 80 * 1.2 = 96: grown again from the new baseline
    assert trimmer.maybe_trim() == (97, 80)
    assert process.trims == 2


def test_trims_are_at_least_the_minimum_interval_apart_and_checks_the_check_interval() -> None:
    process = _Process(rss=100)
    trimmer = _trimmer(process)
    trimmer.maybe_trim()
    process.now, process.rss, process.after_trim = 300.0, 200, 150
    assert trimmer.maybe_trim() == (200, 150)
    process.now, process.rss = 320.0, 400  # before the next check is due
    assert trimmer.maybe_trim() is None
    process.now = 340.0  # checked, grown, but only 40 s after the last trim
    assert trimmer.maybe_trim() is None
    process.now = 600.0
    assert trimmer.maybe_trim() == (400, 150)
    assert process.trims == 2


def test_a_trim_made_elsewhere_resets_the_baseline_and_the_interval() -> None:
    process = _Process(rss=100)
    trimmer = _trimmer(process)
    trimmer.maybe_trim()
    process.now, process.rss = 1000.0, 300  # a restore's peak, trimmed by the runtime
    trimmer.trimmed()
    process.now = 1100.0
    assert trimmer.maybe_trim() is None  # 300 is the baseline now, and only 100 s passed
    process.now, process.rss = 1300.0, 361
    assert trimmer.maybe_trim() is not None


def test_growth_zero_never_reads_the_rss_or_trims() -> None:
    process = _Process(rss=100)
    trimmer = HeapTrimmer(growth=0, rss=lambda: 1 / 0, trim=process.trim)  # type: ignore[arg-type,return-value]
    for _ in range(3):
        assert trimmer.maybe_trim() is None
    assert process.trims == 0


def _runtime(service: str, **settings: Any) -> Any:
    """A runtime around a processor that does nothing, never started: its loop's verbs."""
    from streamml.codec import AvroCodec
    from streamml.processor import Processor, Record, Result
    from streamml.runtime import StreamRuntime
    from streamml.settings import HttpSettings, KafkaSettings, RuntimeSettings
    from streamml.state import State

    class Nothing(Processor):
        def process(self, records: list[Record], state: State) -> Result:  # type: ignore[override]
            return Result()

    return StreamRuntime(
        service=service, processor=Nothing(), inputs={"in": "Label"}, kafka=KafkaSettings(),
        settings=RuntimeSettings(**settings), http=HttpSettings(), codec=AvroCodec(),
    )  # fmt: skip


def test_the_runtime_loop_trims_a_grown_heap_and_counts_it() -> None:
    rt = _runtime("trim-test", heap_trim_growth=0.2, heap_trim_min_interval_s=0)
    process = _Process(rss=100)
    rt._heap = _trimmer(process, check_interval_s=0, min_interval_s=0)
    counter = rt.metrics.heap_trims.labels("trim-test")
    start = counter._value.get()
    rt._maybe_trim_heap()  # baseline
    process.rss, process.after_trim = 150, 90
    rt._maybe_trim_heap()
    assert process.trims == 1
    assert counter._value.get() == start + 1


@pytest.mark.skipif(heap_bytes() is None, reason="no mallinfo2 (not glibc 2.33+)")
def test_the_runtime_loop_reports_the_heap_by_kind() -> None:
    rt = _runtime("heap-test")
    gauge = rt.metrics.heap_bytes
    rt._maybe_trim_heap()
    first = {k: gauge.labels("heap-test", k)._value.get() for k in ("in_use", "free", "mmapped")}
    assert first["in_use"] > 0  # this interpreter's own malloc'd memory
    big = bytearray(64 * 2**20)  # far over the mmap threshold: a mapping of its own
    rt._heap_read_due = 0.0
    rt._maybe_trim_heap()
    mmapped = gauge.labels("heap-test", "mmapped")._value.get()
    assert mmapped >= first["mmapped"] + 64 * 2**20
    del big


_AFTER_A_LARGE_FREE = """
import json, sys
from streamml.memory import fix_mmap_threshold, heap_bytes
if sys.argv[1] == "fixed":
    fix_mmap_threshold(256 * 1024)
big = bytearray(20 * 2**20)  # mapped, then freed: glibc's sliding threshold rises to 20 MiB
del big
before = heap_bytes()["mmapped"]
table = bytearray(2 * 2**20)  # a 2 MiB block, like a large dictionary's table
print(json.dumps(heap_bytes()["mmapped"] - before))
"""


@pytest.mark.skipif(heap_bytes() is None, reason="no mallinfo2 (not glibc 2.33+)")
def test_a_fixed_mmap_threshold_keeps_large_blocks_out_of_the_heap() -> None:
    import json
    import os
    import subprocess
    import sys

    def mapped(mode: str) -> int:
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
        out = subprocess.run([sys.executable, "-c", _AFTER_A_LARGE_FREE, mode], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        return int(json.loads(out.stdout))

    assert mapped("sliding") == 0  # glibc's default: the block came from the heap
    assert mapped("fixed") >= 2 * 2**20  # fixed: a mapping of its own, unmapped when freed
