"""Release several threads at once, each with its own database connection (STYLE: tests)."""

import threading
from collections.abc import Callable

from django.db import connections


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
