"""Where the machine's CPU went over an interval: the kernel's split, and the time stalled.

The soak's latency tail follows the load average, and the load average counts every
runnable or waiting task on the machine, not only the processes the soak samples. Two
kernel figures say where the rest went, per interval:

- ``/proc/stat``'s first line, in cores: ``user`` (with nice), ``system`` (with interrupt
  handling), ``iowait``, ``steal`` (time the hypervisor ran someone else while this
  machine had work: a virtual machine's noisy neighbour) and ``idle``;
- ``/proc/pressure/{cpu,io}`` (PSI, Linux 4.20+), the ``some`` line's total: the share of
  the interval in which at least one task waited for a CPU (``cpu_stall``) or for I/O
  (``io_stall``).

A figure the kernel does not give (no PSI, not Linux) is left out, never made up.

>>> parse_proc_stat("cpu  10 2 5 100 3 1 1 4 0 0\\ncpu0 ...")
{'user': 12, 'system': 7, 'iowait': 3, 'steal': 4, 'idle': 100}
>>> parse_pressure("some avg10=1.0 avg60=0.5 avg300=0.1 total=123456\\nfull avg10=0 total=9")
123456
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

KINDS = ("user", "system", "iowait", "steal", "idle")
TICKS = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second, the unit of /proc's CPU times."""


def parse_proc_stat(text: str) -> dict[str, int]:
    """The all-CPU line of ``/proc/stat`` in clock ticks, by :data:`KINDS`.

    Fields: user nice system idle iowait irq softirq steal (guest time is already in
    user). Older kernels without some of the trailing fields count them as 0.
    """
    first = text.split("\n", 1)[0].split()
    if not first or first[0] != "cpu":
        raise ValueError(f"not /proc/stat's all-CPU line: {first[:1]}")
    values = [int(v) for v in first[1:9]] + [0] * (8 - len(first[1:9]))
    user, nice, system, idle, iowait, irq, softirq, steal = values
    return {"user": user + nice, "system": system + irq + softirq, "iowait": iowait,
            "steal": steal, "idle": idle}  # fmt: skip


def parse_pressure(text: str) -> int | None:
    """Microseconds of the ``some`` line's ``total`` in a ``/proc/pressure/*`` file."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "some":
            for word in words[1:]:
                if word.startswith("total="):
                    return int(word.removeprefix("total="))
    return None


class HostCpu:
    """Each :meth:`take` returns the split and the stalls since the previous one."""

    def __init__(
        self, root: Path = Path("/proc"), clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._root = root
        self._clock = clock
        self._before: tuple[float, dict[str, int]] | None = None

    def _read(self) -> dict[str, int]:
        counters: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            counters.update(parse_proc_stat((self._root / "stat").read_text()))
        for kind in ("cpu", "io"):
            try:
                total = parse_pressure((self._root / "pressure" / kind).read_text())
            except (OSError, ValueError):
                continue
            if total is not None:
                counters[f"{kind}_stall"] = total
        return counters

    def take(self) -> dict[str, float]:
        """Cores per :data:`KINDS`, and ``cpu_stall``/``io_stall`` as shares of the
        interval, since the previous call (empty on the first)."""
        now, counters = self._clock(), self._read()
        before, self._before = self._before, (now, counters)
        if before is None or now <= before[0]:
            return {}
        seconds = now - before[0]
        out: dict[str, float] = {}
        for name, value in counters.items():
            old = before[1].get(name)
            if old is None or value < old:
                continue
            delta = value - old
            if name.endswith("_stall"):
                out[name] = round(delta / 1e6 / seconds, 4)
            else:
                out[name] = round(delta / TICKS / seconds, 4)
        return out
