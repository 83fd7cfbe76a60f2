"""Product metrics exported at /metrics beside django-prometheus' request metrics (docs/contract.md §8).
The page itself is ``config.views.metrics_export``: the engine counts here without importing the
invariant monitor that the page reads.

``manage.py serve`` sets PROMETHEUS_MULTIPROC_DIR, so the counters of every web worker add up.
"""

import functools
from timeit import default_timer

from django.db import transaction
from django_prometheus.middleware import Metrics
from prometheus_client import CollectorRegistry, Counter, Gauge

HOLDS_CREATED = Counter("booking_holds_created_total", "Holds created", ["domain"])
HOLDS_EXPIRED = Counter("booking_holds_expired_total", "Holds flipped to EXPIRED", ["domain"])
CONFLICTS = Counter("booking_conflicts_total", "Requests refused with 409", ["code"])
CONSTRAINT_BACKSTOPS = Counter(
    "booking_constraint_backstop_total",
    "Claims refused by a database constraint rather than by the lock-and-check: each one means a "
    "locking bug or a write outside the services",
    ["constraint"],
)

# The invariant monitor's last result (core.invariants), set from its stored report by the web
# process answering the scrape (``config.views.metrics_export``): "mostrecent" makes the
# multiprocess collector report that value, not one per worker, so every worker answers the same.
INVARIANT_VIOLATIONS = Gauge(
    "booking_invariant_violations",
    "Rows breaking each invariant at its last check (0: it holds)",
    ["invariant"],
    multiprocess_mode="mostrecent",
)
INVARIANTS_CHECKED = Gauge(
    "booking_invariants_checked_timestamp_seconds",
    "When the invariants were last checked (Unix time; 0: never)",
    multiprocess_mode="mostrecent",
)


def count_on_commit(counter: Counter, *labels: str, amount: int = 1) -> None:
    """Count an event of the current transaction only once it commits."""
    if amount:
        transaction.on_commit(lambda: counter.labels(*labels).inc(amount))


class RequestMetricsMiddleware:
    """The request metrics worth their cost: responses by status, view and method, and latency by view
    and method (django-prometheus' own series, so dashboards keep working).

    django-prometheus' two middlewares update fourteen series per request (by transport, charset, body
    size, template, ...), a fifth of the CPU of a small GET (docs/decisions/0006-request-floor.md); these
    two answer "how many, how many failed, how slow" per endpoint. First in MIDDLEWARE, so the latency
    covers every middleware too. Each series' child is looked up once per label set and kept: the
    client's ``labels()`` checks its arguments and takes a lock on every call.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        metrics = Metrics.get_instance()
        self._responses = functools.cache(
            lambda status, view, method: metrics.responses_by_status_view_method.labels(
                status=status, view=view, method=method
            )
        )
        self._latency = functools.cache(
            lambda view, method: metrics.requests_latency_by_view_method.labels(view=view, method=method)
        )

    def __call__(self, request):
        started = default_timer()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = (match and match.view_name) or "<unnamed view>"
        self._responses(response.status_code, view, request.method).inc()
        self._latency(view, request.method).observe(default_timer() - started)
        return response


# Gauges read from the database at each scrape: the same in every process, so they are not summed
# across web workers like the counters above (webhooks register theirs here).
DATABASE_GAUGES = CollectorRegistry(auto_describe=False)
