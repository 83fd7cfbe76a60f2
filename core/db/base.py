"""Django's PostgreSQL backend with django-prometheus' database metrics: the same series
(``django_db_execute_total``, ``django_db_execute_many_total``, ``django_db_query_duration_seconds``,
``django_db_errors_total``, and the connection counters), counted the same way, with each series' child
looked up once per connection instead of on every statement.

django-prometheus' cursor calls ``labels()`` on three series for every ``execute`` (each call checks its
arguments and takes a lock) and builds a timer and an exception counter: with one statement per car hold,
that was more of a hold's server CPU than the statement's own Python in psycopg
(docs/decisions/0006-request-floor.md, "The third floor"; ``RequestMetricsMiddleware`` does the same for the
request metrics)."""

from __future__ import annotations

import functools
from timeit import default_timer

from django_prometheus.db import errors_total, execute_many_total, execute_total, query_duration_seconds
from django_prometheus.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self):
        conn_params = super(base.DatabaseWrapper, self).get_connection_params()  # Django's, not the wrapper's
        conn_params["cursor_factory"] = counted_cursor(conn_params["cursor_factory"], self.alias, self.vendor)
        return conn_params


@functools.cache
def counted_cursor(cursor_class: type, alias: str, vendor: str) -> type:
    """``cursor_class`` counting its statements in django-prometheus' database series for ``alias``."""
    executed = execute_total.labels(alias, vendor)
    executed_many = execute_many_total.labels(alias, vendor)
    duration = query_duration_seconds.labels(alias, vendor)
    errors = functools.cache(lambda kind: errors_total.labels(alias, vendor, kind))

    def counted(amount: int, many: bool, run):
        executed.inc(amount)
        if many:
            executed_many.inc(amount)
        started = default_timer()
        try:
            return run()
        except BaseException as exc:
            errors(type(exc).__name__).inc()
            raise
        finally:
            duration.observe(default_timer() - started)

    class CountedCursor(cursor_class):  # a class made per backend, over the cursor it is given
        def execute(self, *args, **kwargs):
            return counted(1, False, lambda: super(CountedCursor, self).execute(*args, **kwargs))

        def executemany(self, query, param_list, *args, **kwargs):
            run = lambda: super(CountedCursor, self).executemany(query, param_list, *args, **kwargs)  # noqa: E731
            return counted(len(param_list), True, run)

    return CountedCursor
