"""Product metrics exported at /metrics beside django-prometheus' request metrics (SPEC 8).

``manage.py serve`` sets PROMETHEUS_MULTIPROC_DIR, so the counters of every web worker add up.
"""

from django.db import transaction
from prometheus_client import Counter

HOLDS_CREATED = Counter("booking_holds_created_total", "Holds created", ["domain"])
HOLDS_EXPIRED = Counter("booking_holds_expired_total", "Holds flipped to EXPIRED", ["domain"])
CONFLICTS = Counter("booking_conflicts_total", "Requests refused with 409", ["code"])
CONSTRAINT_BACKSTOPS = Counter(
    "booking_constraint_backstop_total",
    "Claims refused by a database constraint rather than by the lock-and-check: each one means a "
    "locking bug or a write outside the services",
    ["constraint"],
)


def count_on_commit(counter: Counter, *labels: str, amount: int = 1) -> None:
    """Count an event of the current transaction only once it commits."""
    if amount:
        transaction.on_commit(lambda: counter.labels(*labels).inc(amount))
