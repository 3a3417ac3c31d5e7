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
from collections.abc import Callable

import psutil


def _busy_seconds() -> float:
    # irq and softirq time is left out: on loopback it is mostly our own traffic's.
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + getattr(times, "steal", 0.0)


def tree_total(pid: int, measure: Callable[[psutil.Process], float]) -> float:
    """``measure`` summed over ``pid`` and its descendants (0 once it has gone)."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += measure(proc)
    return total


def _cpu_seconds(proc: psutil.Process) -> float:
    spent = proc.cpu_times()
    return float(spent.user + spent.system)


def _tree_cpu_seconds(pid: int) -> float:
    return tree_total(pid, _cpu_seconds)


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


def speed_probe_ms() -> float:
    """Milliseconds for a fixed piece of pure-Python work (best of three).

    Contention that no process here accounts for (a busy host under this virtual machine,
    a lowered clock) shows as this getting slower than the best seen in the run.
    """
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(100_000):
            total += i * i
        best = min(best, time.perf_counter() - started)
    return best * 1000


class QuietGate:
    """Waits for the machine to calm down before a point, within a total time budget.

    Quiet means: other processes use at most ``threshold_pct`` CPU (% of one core) and the
    speed probe is within ``max_slowdown`` of the fastest seen. ``budget_s`` caps the waiting
    over the whole run, so a busy machine delays the run by at most that much and is then
    measured as it is (and reported as such).
    """

    def __init__(
        self, pids: list[int], threshold_pct: float, budget_s: float, max_slowdown: float = 1.15
    ) -> None:
        self.pids = pids
        self.threshold_pct = threshold_pct
        self.budget_s = budget_s
        self.max_slowdown = max_slowdown
        self.waited_s = 0.0
        self.fastest_probe_ms = float("inf")
        self.last_slowdown = 1.0

    def _probe_slowdown(self) -> float:
        probe = speed_probe_ms()
        self.fastest_probe_ms = min(self.fastest_probe_ms, probe)
        self.last_slowdown = probe / self.fastest_probe_ms
        return self.last_slowdown

    @property
    def exhausted(self) -> bool:
        return self.waited_s >= self.budget_s

    def wait(self, window_s: float = 0.5) -> float:
        """Sample ``window_s`` windows until one is quiet or the budget is spent; returns
        the last window's foreign CPU %."""
        while True:
            with CpuWatch(self.pids) as watch:
                time.sleep(window_s)
            calm = watch.foreign_pct <= self.threshold_pct
            if (calm and self._probe_slowdown() <= self.max_slowdown) or self.exhausted:
                return watch.foreign_pct
            self.waited_s += window_s
