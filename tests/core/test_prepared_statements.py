"""Statements bound server side and prepared (docs/decisions/0021-prepared-statements.md): a claim
statement is one prepared statement per connection, a migration that adds a column changes nothing, and
one that changes what a prepared statement returns answers 503 once, never 500."""

from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core import claims
from core.audit.models import AuditEvent
from reservations.models import Car, Reservation
from reservations.services import hold_statement
from tests.factories import UserFactory
from tests.reservations.factories import CarFactory, ReservationFactory
from tests.round_trips import round_trips

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def prepare_at_once():
    """This connection prepares every statement from its first run."""
    connection.ensure_connection()
    connection.connection.prepare_threshold = 0
    yield
    if connection.connection is not None:
        connection.connection.prepare_threshold = settings.DB_PREPARE_THRESHOLD


def _prepared(fragment: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", [f"%{fragment}%"])
        return cursor.fetchone()[0]


def _alter(statement: str) -> None:
    """A migration's DDL, committed by another session (the deploy's ``migrate``)."""
    db = connection.settings_dict
    with psycopg.connect(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None, host=db["HOST"], port=db["PORT"]
    ) as other:
        other.execute(statement)


def test_a_claim_statement_is_prepared_once_whatever_the_size_of_its_integers(prepare_at_once):
    """psycopg types an int by its value (int2, int4, int8) and prepares a statement per combination of
    types: ``Statement`` sends them all as bigint."""
    buyer, now = UserFactory(), timezone.now()
    with transaction.atomic():
        for car_id in (1, 300, 70_000, 5_000_000_000):
            hold_statement().fetchone(
                {
                    "car": car_id,
                    "owner": buyer.pk,
                    "buyer": buyer.pk,
                    "limit": 0,  # nothing is inserted: only the statement is run
                    "actor": buyer.pk,
                    "actor_label": f"user:{buyer.pk}",
                    "expiry_actor": "system:test",
                    "now": now,
                    "expires_at": now + timedelta(minutes=5),
                    "idempotency_key": "",
                    "occurred_at": now,
                    "trace_id": "",
                    "metadata": "{}",
                }
            )

    assert _prepared("car_moved AS") == 1  # the car hold's statement (the seat hold's has a created_event too)


def test_a_rollback_keeps_the_connections_prepared_statements(cached_api_of, prepare_at_once):
    """A refusal in a transaction rolls it back; psycopg would then forget every prepared statement of the
    connection and send DEALLOCATE ALL (``statements.keep_prepared_statements`` keeps them): what was
    prepared stays prepared. (A hold refused in autocommit has no transaction to roll back.)"""
    held = ReservationFactory()
    api = cached_api_of(UserFactory())
    assert api.post("/api/reservations", {"carId": held.car_id}).status_code == 409  # prepares the hold
    before = _prepared("created_event AS")

    with round_trips() as trips, transaction.atomic():
        refused = api.post("/api/reservations", {"carId": held.car_id})
        transaction.set_rollback(True)

    assert refused.status_code == 409, refused.content
    assert any("ROLLBACK" in s for s in trips.statements), trips.statements
    assert not any("DEALLOCATE" in s for s in trips.statements), trips.statements
    assert before > 0 and _prepared("created_event AS") == before


def test_the_cap_is_one_declaration_read_by_the_statement_the_admin_and_the_refusal():
    """``Cap.counts`` is what the hold's statement counts, what the admin says and what the refusal says."""
    from core.errors import LimitReached
    from slots.models import SlotBooking
    from slots.services.bookings import SLOT_BOOKINGS, book_statement

    cap = SLOT_BOOKINGS.cap
    assert cap.counts is claims.ACTIVE
    assert cap.counted(SlotBooking, "b").as_string(None) in book_statement().text
    assert cap.counts.words in cap.describe()
    with pytest.raises(LimitReached) as refused:
        cap.check(count=5, asked=1, limit=5)
    assert cap.counts.words in refused.value.message


@pytest.mark.parametrize("rows", [claims.LIVE_HOLDS, claims.CONFIRMED, claims.ACTIVE, claims.OVERDUE, claims.BLOCKING])
def test_each_rows_declaration_selects_the_same_rows_in_sql_and_in_the_orm(rows):
    now = timezone.now()
    past = now - timedelta(hours=1)
    made = [
        Reservation.objects.create(
            car=CarFactory(), buyer=UserFactory(), state=state, expires_at=expires, created_at=past, updated_at=past
        )
        for state, expires in [
            ("HELD", now + timedelta(minutes=5)),
            ("HELD", past + timedelta(minutes=1)),
            ("CONFIRMED", past + timedelta(minutes=1)),
            ("CANCELLED", now + timedelta(minutes=5)),
            ("EXPIRED", past + timedelta(minutes=1)),
        ]
    ]
    where = rows.sql(Reservation).as_string(None)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM reservations_reservation WHERE {where}", {"now": now})
        by_sql = {pk for (pk,) in cursor.fetchall()}

    by_orm = set(Reservation.objects.filter(rows.q(Reservation, now=now)).values_list("pk", flat=True))

    assert by_sql == by_orm and by_sql <= {r.pk for r in made} and by_sql


def test_a_migration_under_a_prepared_statement_answers_503_once_then_the_hold_works(cached_api_of, prepare_at_once):
    """A column whose type a migration changes changes the result of every prepared statement that
    returns it: PostgreSQL refuses to run them ("cached plan must not change result type"). The request
    answers 503 ``unavailable`` (the connection is dropped with its prepared statements), and the retry
    runs on a new connection. (The car hold returns no column of the car: it is planned again, and holds.)"""
    cars, buyer = [CarFactory() for _ in range(3)], UserFactory()
    api = cached_api_of(buyer)
    assert api.get(f"/api/cars/{cars[0].pk}").status_code == 200  # the car's read, prepared
    assert api.post("/api/reservations", {"carId": cars[0].pk}).status_code == 201  # the hold, prepared
    _alter("ALTER TABLE reservations_car ALTER COLUMN label TYPE varchar(201)")
    try:
        held = api.post("/api/reservations", {"carId": cars[2].pk})
        refused = api.get(f"/api/cars/{cars[1].pk}")
        again = api.get(f"/api/cars/{cars[1].pk}")
    finally:
        connection.close()
        _alter("ALTER TABLE reservations_car ALTER COLUMN label TYPE varchar(200)")

    assert held.status_code == 201, held.content
    assert refused.status_code == 503, refused.content
    assert refused.json()["error"]["code"] == "unavailable" and refused["Retry-After"] == "1"
    assert again.status_code == 200, again.content


def test_a_migration_that_adds_columns_under_prepared_statements_answers_no_error(cached_api_of, prepare_at_once):
    """What most migrations do (a column added, here to the car, the reservation and the audit table that the
    hold's statements read and write) leaves every prepared statement's result as it was: each statement
    names its columns, so PostgreSQL plans it again on its next run and no request notices. The connection
    keeps its prepared statements (no 503, no reconnect)."""
    cars, buyer = [CarFactory() for _ in range(3)], UserFactory()
    api = cached_api_of(buyer)
    assert api.post("/api/reservations", {"carId": cars[0].pk}).status_code == 201  # the hold's statements, prepared
    prepared = _prepared("FOR NO KEY UPDATE") + _prepared("created_event AS")
    backend = connection.connection.info.backend_pid
    added = [model._meta.db_table for model in (Car, Reservation, AuditEvent)]
    _alter("; ".join(f"ALTER TABLE {table} ADD COLUMN migrated integer NOT NULL DEFAULT 0" for table in added))
    try:
        held = api.post("/api/reservations", {"carId": cars[1].pk})
        confirmed = api.post(f"/api/reservations/{held.json()['id']}/confirm")
        after = _prepared("FOR NO KEY UPDATE") + _prepared("created_event AS")
    finally:
        _alter("; ".join(f"ALTER TABLE {table} DROP COLUMN migrated" for table in added))

    assert held.status_code == 201, held.content
    assert confirmed.status_code == 200, confirmed.content
    assert connection.connection.info.backend_pid == backend and after >= prepared > 0
