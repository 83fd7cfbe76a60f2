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
