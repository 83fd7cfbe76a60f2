"""Release several threads at once, each with its own database connection (STYLE: tests)."""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from django.db import connection, connections, transaction
from django.db.models import Model
from psycopg import sql

from core import locking
from core.statements import table
from tests.round_trips import RoundTrips, round_trips


def run_concurrently(functions: list[Callable[[], object]], timeout: float = 60) -> list[object]:
    """Run each function in its own thread, all released together by a barrier; return their results
    in order (an exception a function raised is returned in its place)."""
    barrier = threading.Barrier(len(functions))
    results: list[object] = [None] * len(functions)

    def run(index: int, function: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout)
            results[index] = function()
        except Exception as exc:
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results


@contextmanager
def elsewhere(statement: str, params: list | None = None) -> Iterator[psycopg.Cursor]:
    """Run ``statement`` in a transaction of another connection (psql, another process) and keep it open,
    holding whatever it locked, until the block ends; yields that connection's cursor."""
    settings = connection.settings_dict
    other = psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
    )
    try:
        cursor = other.cursor()
        cursor.execute(statement, params)
        yield cursor
    finally:
        other.close()  # never committed: rolled back


def deadlocks_found_sooner(monkeypatch, after_ms: int = 100) -> None:
    """The connections the test opens from now on (its racers') look for a deadlock after ``after_ms`` of
    waiting for a lock instead of PostgreSQL's ``deadlock_timeout`` (1 s): a control without a lock can make
    its racers wait on each other in many cycles, which PostgreSQL breaks one per wait. The verdicts are the
    same, sooner. (A superuser's setting: as another role, the server's own stays.)"""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('is_superuser') = 'on'")
        (superuser,) = cursor.fetchone()
    if superuser:
        options = connection.settings_dict["OPTIONS"]
        monkeypatch.setitem(options, "options", f"{options.get('options', '')} -c deadlock_timeout={after_ms}ms")


# --- one-statement holds (docs/decisions/0022-one-statement-holds.md) ---------------------------------


def unlocked(model: type[Model], pause: float):
    """``locking.claim_lock_sql`` without the lock for rows of ``model``: the row read from the snapshot
    (so the statement judges it fresh) after ``pause`` seconds, so that every racer's snapshot is taken
    before any of them commits: the race, every time. The order's condition (``lock_before``) stays: a
    statement whose snapshot already refuses reads the row no more than with the lock (without it, a racer
    that started after the winner's commit read the row beside no lock of its buyer, judged its count
    stale, and could not decide: "could not decide under its own locks", a control's flake)."""
    claim_lock = locking.claim_lock_sql

    def claim_lock_sql(lock_model, key, *, lock_before=None, returning=()):
        if lock_model is not model:
            return claim_lock(lock_model, key, lock_before=lock_before, returning=returning)
        seq = sql.Identifier(locking.CLAIM_SEQ)
        # (A scalar sub-select, not EXISTS: EXISTS never evaluates its select list.)
        return sql.SQL("SELECT {}{} FROM {} WHERE id = {}{} AND (SELECT 1 FROM pg_sleep({})) = 1").format(
            seq,
            sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(name)) for name in returning),
            table(lock_model),
            key,
            sql.SQL(" AND {}").format(lock_before) if lock_before is not None else sql.SQL(""),
            sql.Literal(pause),
        )

    return claim_lock_sql


def wait_until_blocked() -> None:
    """Until some backend waits for a lock (a one-statement hold, behind the open transaction)."""
    for _ in range(200):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0"
            )
            if cursor.fetchone()[0]:
                return
        time.sleep(0.025)
    raise AssertionError("the hold never waited for the lock")


def behind_an_open_hold(first, second) -> tuple[object, object, RoundTrips]:
    """``first`` holds in a transaction left open; ``second``, a one-statement hold in autocommit, waits
    for a lock ``first`` took; then ``first`` commits. Returns both results and ``second``'s round trips."""
    held, release = threading.Event(), threading.Event()
    trips = []

    def opener():
        with transaction.atomic():
            result = first()
            held.set()
            release.wait(10)
        return result

    def waiter():
        held.wait(10)
        with round_trips() as counted:
            try:
                return second()
            finally:
                trips.append(counted)

    def releaser():
        held.wait(10)
        wait_until_blocked()
        release.set()

    results = run_concurrently([opener, waiter, releaser])
    return results[0], results[1], trips[0]


def wait_until_sleeping() -> None:
    """Until some backend sleeps in its statement (``pg_sleep``: the paused one, holding its locks)."""
    for _ in range(200):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
            )
            if cursor.fetchone()[0]:
                return
        time.sleep(0.01)
    raise AssertionError("nobody paused in their statement")
