"""The database backend's metrics (``core.db``): django-prometheus' series, counted as its own cursor
counted them, each child looked up once."""

import pytest
from django.db import DatabaseError, connection, transaction
from prometheus_client import REGISTRY

LABELS = {"alias": "default", "vendor": "postgresql"}
SERIES = ("django_db_execute_total", "django_db_execute_many_total", "django_db_query_duration_seconds_count")


def counts(**labels: str) -> dict[str, float]:
    return {name: REGISTRY.get_sample_value(name, {**LABELS, **labels}) or 0.0 for name in SERIES}


def counted(run) -> dict[str, float]:
    before = counts()
    with connection.cursor() as cursor:
        run(cursor)
    return {name: value - before[name] for name, value in counts().items()}


@pytest.mark.django_db
def test_a_statement_is_counted_and_timed():
    assert counted(lambda cursor: cursor.execute("SELECT 1")) == dict(zip(SERIES, (1, 0, 1), strict=True))


@pytest.mark.django_db
def test_a_batch_counts_each_of_its_statements_and_is_timed_once():
    assert counted(lambda cursor: cursor.executemany("SELECT %s", [(1,), (2,)])) == dict(
        zip(SERIES, (2, 2, 1), strict=True)
    )


@pytest.mark.django_db
def test_an_error_is_counted_by_its_type():
    def error() -> float:
        return REGISTRY.get_sample_value("django_db_errors_total", {**LABELS, "type": "UndefinedTable"}) or 0.0

    before = error()
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM no_such_table")

    assert error() - before == 1
