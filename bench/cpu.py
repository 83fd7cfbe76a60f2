"""CPU accounting: user + system seconds of groups of processes over a scenario.

A group is a function returning its pids now (the server's process tree, the PostgreSQL processes of
the bench database). Between ``start`` and ``stop`` a thread samples every group every quarter second,
so a process that ends inside the window (pgbench's backends, a replaced worker) still counts, up to
its last sample; a process born inside the window counts from zero.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psutil

SAMPLE_EVERY_S = 0.25
Group = Callable[[], list[int]]


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        seconds[pid] = times.user + times.system
    return seconds


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return []


class Window:
    """One measurement: the first and the last CPU reading of every process seen in each group."""

    def __init__(self, groups: dict[str, Group]):
        self.groups = groups
        self.first = {name: cpu_seconds(pids()) for name, pids in groups.items()}
        self.last = {name: dict(seen) for name, seen in self.first.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self._sample()

    def _sample(self) -> None:
        for name, pids in self.groups.items():
            self.last[name].update(cpu_seconds(pids()))

    def close(self) -> dict[str, float | None]:
        """CPU seconds per group; None for a group with no process to see (a database server on
        another machine)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return {
            name: sum(seconds - self.first[name].get(pid, 0.0) for pid, seconds in last.items()) if last else None
            for name, last in self.last.items()
        }


class Meter:
    def __init__(self, groups: dict[str, Group]):
        self.groups = groups

    def start(self) -> Window:
        return Window(self.groups)

    def stop(self, window: Window) -> dict[str, float | None]:
        return window.close()
