"""Release several threads at once, each with its own database connection (STYLE: tests)."""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from django.db import connection, connections


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
