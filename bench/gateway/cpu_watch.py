"""How much CPU went to processes outside the benchmark while a point was measured.

The machine may be shared (tests, browsers, other services). Every point records the CPU
time spent by everything that is not the benchmark (this process, its load generator
children, the mock upstream and the targets); a point with much of it is less trustworthy,
and the report says so instead of hiding it.
"""

from __future__ import annotations

import contextlib
import os
import time

import psutil


def _busy_seconds() -> float:
    # irq and softirq time is left out: on loopback it is mostly our own traffic's.
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + getattr(times, "steal", 0.0)


def _tree_cpu_seconds(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            spent = proc.cpu_times()
            total += spent.user + spent.system
    return total


def _own_cpu_seconds() -> float:
    # Includes children already waited for, which is where finished wrk runs end up.
    spent = os.times()
    return spent.user + spent.system + spent.children_user + spent.children_system


class CpuWatch:
    """``with CpuWatch(pids) as watch: ...`` then ``watch.foreign_pct`` (of one core)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.foreign_pct = 0.0

    def _ours(self) -> float:
        return _own_cpu_seconds() + sum(_tree_cpu_seconds(pid) for pid in self.pids)

    def __enter__(self) -> CpuWatch:
        self._started = time.perf_counter()
        self._busy, self._our = _busy_seconds(), self._ours()
        return self

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.perf_counter() - self._started
        foreign = (_busy_seconds() - self._busy) - (self._ours() - self._our)
        self.foreign_pct = max(0.0, 100 * foreign / elapsed) if elapsed > 0 else 0.0
