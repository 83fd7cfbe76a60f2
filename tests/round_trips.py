"""Count the round trips a piece of code makes to PostgreSQL, on the wire (libpq's trace of this
thread's connection): every ReadyForQuery the server sends ends one, so BEGIN and COMMIT count."""

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import connection
from psycopg import pq


@dataclass
class RoundTrips:
    messages: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum("\tReadyForQuery\t" in m for m in self.messages)

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
