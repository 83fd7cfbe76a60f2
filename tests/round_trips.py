"""Count the round trips a piece of code makes to PostgreSQL, on the wire (libpq's trace of this
thread's connection): every ReadyForQuery the server sends ends one, so BEGIN and COMMIT count.

A budget is the steady state of a connection: the round trip in which psycopg prepares a statement (its
named Parse, alone before its Sync: once per connection, at the ``DB_PREPARE_THRESHOLD``-th run of the
statement, docs/decisions/0021-prepared-statements.md) is counted apart, as ``preparations``, so that a
budget does not depend on how often the tests before it ran the same statement."""

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import connection
from psycopg import pq


@dataclass
class RoundTrips:
    messages: list[str] = field(default_factory=list)

    def _trips(self) -> list[list[str]]:
        """The messages of each round trip, the last its ReadyForQuery."""
        trips: list[list[str]] = [[]]
        for message in self.messages:
            trips[-1].append(message)
            if "\tReadyForQuery\t" in message:
                trips.append([])
        return trips[:-1]

    @staticmethod
    def _prepares(trip: list[str]) -> bool:
        """Whether a round trip only prepared a statement: the frontend sent a named Parse and its Sync."""
        sent = [m.split("\t")[2] for m in trip if m.startswith("F\t")]
        named = any(
            m.startswith("F\t") and "\tParse\t" in m and not m.split("\t", 3)[3].lstrip().startswith('""') for m in trip
        )
        return named and sorted(sent) == ["Parse", "Sync"]

    @property
    def count(self) -> int:
        return sum(not self._prepares(trip) for trip in self._trips())

    @property
    def preparations(self) -> int:
        return sum(self._prepares(trip) for trip in self._trips())

    @property
    def statements(self) -> list[str]:
        """What was sent (for the assertion message): each statement's text (a simple Query, or the Parse of
        the extended protocol: statements are bound server side) and each Bind of a prepared one."""
        sent = ("\tQuery\t", "\tParse\t", "\tBind\t")
        return [m.split("\t", 3)[3] for m in self.messages if m.startswith("F\t") and any(k in m for k in sent)]


@contextmanager
def round_trips():
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    counted = RoundTrips()
    with tempfile.TemporaryFile() as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield counted
        finally:
            pgconn.untrace()
            trace.seek(0)
            counted.messages = trace.read().decode(errors="replace").splitlines()
