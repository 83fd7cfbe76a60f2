"""Recent reads: a hot read served from this process's memory for at most ``READS_MAX_AGE_SECONDS``
(at most 1 s), labelled with the moment it was read (``asOf``). See docs/decisions/0008-reads.md.

A value is what the database said at ``as_of``, judged at ``as_of`` (an overdue hold is available):
it is never patched, only replaced by a new read. Each process keeps its own values; nothing needs to
agree between processes, because every value is true of its own ``as_of`` and none is older than the
bound when it is served.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from django.conf import settings

T = TypeVar("T")

LONGEST = timedelta(seconds=1)  # the bound on how old a served value may be


def max_age() -> timedelta:
    """``READS_MAX_AGE_SECONDS``, never more than a second; 0 reads the database every time."""
    return min(LONGEST, timedelta(seconds=max(0.0, float(settings.READS_MAX_AGE_SECONDS))))


class RecentReads(Generic[T]):
    """At most ``size`` values (least recently used go first), each served while it is younger than
    ``max_age()``. One thread reads a missing or stale key at a time; the others wait for its value."""

    def __init__(self, *, size: int):
        self.size = size
        self._values: OrderedDict[Hashable, tuple[datetime, T]] = OrderedDict()
        self._lock = threading.Lock()
        self._reading: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, *, now: datetime, read: Callable[[datetime], T]) -> tuple[T, datetime]:
        """``(value, as_of)``: a value read at most ``max_age()`` before ``now``, or ``read(now)``
        (which then has ``as_of = now``). An exception from ``read`` is raised and nothing is kept."""
        age = max_age()
        if not age:
            return read(now), now
        oldest = now - age
        found = self._fresh(key, oldest=oldest, now=now)
        if found is not None:
            return found
        with self._lock:
            reading = self._reading.setdefault(key, threading.Lock())
        try:
            with reading:
                found = self._fresh(key, oldest=oldest, now=now)  # another thread may have just read it
                if found is not None:
                    return found
                value = read(now)
                with self._lock:
                    self._values[key] = (now, value)
                    self._values.move_to_end(key)
                    while len(self._values) > self.size:
                        self._values.popitem(last=False)
                return value, now
        finally:
            with self._lock:
                if self._reading.get(key) is reading:
                    del self._reading[key]

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def _fresh(self, key: Hashable, *, oldest: datetime, now: datetime) -> tuple[T, datetime] | None:
        entry = self._values.get(key)
        # A value read "after" now (the clock went back, or another thread read it while this one
        # waited) is served only within the same bound, so a clock step never keeps a value alive.
        if entry is None or not oldest < entry[0] <= now + LONGEST:
            return None
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
        return entry[1], entry[0]
