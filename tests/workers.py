"""A real Celery worker for a test: celery.contrib.testing's, in a thread of the test process."""

import contextlib
from collections.abc import Iterator

from celery import Celery
from celery.contrib.testing.worker import start_worker

# One name for every test worker: the filesystem broker keeps the binding of a worker's control queue (its
# "pidbox", named after the worker) when the worker has gone, and a broadcast writes a message into every
# bound queue. Under one name there is one such queue, read by the worker the shutdown is for; under
# celery's default name (the test process's id) each test run would add one that no worker reads.
HOSTNAME = "tests@booking-site"


@contextlib.contextmanager
def real_worker(app: Celery) -> Iterator[object]:
    """A worker (the solo pool) on ``app``'s broker, stopped through the broker: remote control's ``shutdown``
    to this worker alone, which it reads at its next look at the broker (within the filesystem broker's
    polling interval, 1 s; at once on Redis or RabbitMQ). ``start_worker``'s own stop only sets a flag that
    the worker's loop reads between two waits on the broker: 4 s later on the filesystem broker (the rest
    of a 2 s wait, and one more), 10 s on RabbitMQ."""
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30, hostname=HOSTNAME) as worker:
        yield worker
        app.control.shutdown(destination=[HOSTNAME])
