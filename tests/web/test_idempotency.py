"""Idempotency-Key (docs/contract.md §3.4), exercised through the car reservation endpoints."""

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from core.models import IdempotencyRecord
from reservations.models import Car, Reservation
from tests.concurrency import elsewhere, run_concurrently
from tests.factories import UserFactory
from tests.reservations.factories import CarFactory
from web.accounts.models import User
from web.idempotency import idempotency_prune, lock_id


def hold(client, car, key=None, **body):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post("/api/reservations", {"carId": car.pk, **body}, format="json", **headers)


@pytest.mark.django_db
def test_a_retry_replays_the_first_response(api):
    car = CarFactory()
    first = hold(api, car, key="k-1")

    again = hold(api, car, key="k-1")

    assert again.status_code == 201 and again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert Reservation.objects.filter(car=car).count() == 1


@pytest.mark.django_db
def test_request_id_in_the_body_is_the_same_key(api):
    car = CarFactory()
    first = hold(api, car, requestId="req-7")

    again = hold(api, car, requestId="req-7")

    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert first.json()["requestId"] == "req-7"


@pytest.mark.django_db
def test_an_error_response_is_replayed_too(api, other_user, client_for):
    car = CarFactory()
    hold(client_for(other_user), car)
    refused = hold(api, car, key="k-2")

    again = hold(api, car, key="k-2")

    assert refused.status_code == again.status_code == 409 and again["Idempotent-Replayed"] == "true"


@pytest.mark.django_db
def test_the_same_key_with_another_body_is_422(api):
    hold(api, CarFactory(), key="k-3")

    response = hold(api, CarFactory(), key="k-3")

    assert response.status_code == 422 and response.json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.django_db
def test_keys_are_scoped_to_the_caller(api, client_for, other_user):
    first = hold(api, CarFactory(), key="shared")

    theirs = hold(client_for(other_user), CarFactory(), key="shared")

    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert "Idempotent-Replayed" not in theirs


@pytest.mark.django_db
def test_header_and_body_keys_must_agree(api):
    response = hold(api, CarFactory(), key="a", requestId="b")

    assert response.status_code == 400 and "requestId" in response.json()["error"]["details"]["fields"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [{"requestId": 5}, {"requestId": ""}, {"requestId": "x" * 256}, {"requestId": None}],  # null: schemathesis
)
def test_bad_request_ids_are_400(api, body):
    assert hold(api, CarFactory(), **body).status_code == 400


@pytest.mark.django_db
def test_a_key_too_long_is_400(api):
    assert hold(api, CarFactory(), key="x" * 256).status_code == 400


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_a_request_in_flight_answers_409_with_retry_after(api, user, settings):
    car = CarFactory()
    settings.DB_LOCK_TIMEOUT_MS = 4500

    with elsewhere("SELECT pg_advisory_xact_lock(%s)", [lock_id(user.pk, "k-4")]):  # the first is running
        response = hold(api, car, key="k-4")

    assert response.status_code == 409 and response.json()["error"]["code"] == "request_in_progress"
    assert response["Retry-After"] == "5"  # the first request ends within a lock wait of DB_LOCK_TIMEOUT_MS
    assert not IdempotencyRecord.objects.exists() and not Reservation.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_a_request_whose_process_died_leaves_nothing_behind(api, user):
    car = CarFactory()
    with elsewhere("SELECT pg_advisory_xact_lock(%s)", [lock_id(user.pk, "k-5")]) as died:
        died.execute(
            "INSERT INTO booking_site_idempotencyrecord (user_id, key, fingerprint, method, path,"
            " response_status, created_at) VALUES (%s, 'k-5', 'x', 'POST', '/api/reservations', 201, now())",
            [user.pk],
        )
        died.connection.close()  # the process died inside its transaction

    response = hold(api, car, key="k-5")

    assert response.status_code == 201 and "Idempotent-Replayed" not in response
    assert IdempotencyRecord.objects.get(key="k-5").response_body == response.json()


@pytest.mark.django_db
def test_a_claim_left_by_the_design_before_is_taken_over(api, user):
    car = CarFactory()
    IdempotencyRecord.objects.create(
        user=user, key="k-5", fingerprint="x", method="POST", path="/", created_at=timezone.now()
    )

    response = hold(api, car, key="k-5")

    assert response.status_code == 201 and "Idempotent-Replayed" not in response
    assert IdempotencyRecord.objects.get(key="k-5").response_status == 201


@pytest.mark.django_db
def test_server_errors_are_not_stored(api, monkeypatch):
    from reservations import services

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(services, "reservation_hold", broken)
    api.raise_request_exception = False

    response = hold(api, CarFactory(), key="k-6")

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert not IdempotencyRecord.objects.filter(key="k-6").exists()


@pytest.mark.django_db
def test_prune_deletes_records_past_their_ttl(api, settings):
    hold(api, CarFactory(), key="old")
    hold(api, CarFactory(), key="new")
    IdempotencyRecord.objects.filter(key="old").update(
        created_at=timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS, seconds=1)
    )

    assert idempotency_prune(now=timezone.now()) == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_concurrent_duplicates_make_one_hold(client_for):
    car = CarFactory()
    buyer = UserFactory()
    clients = [client_for(buyer) for _ in range(12)]

    responses = run_concurrently([lambda c=c: hold(c, car, key="same") for c in clients])

    fresh = [r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r]
    replays = [r for r in responses if r.status_code == 201 and r.get("Idempotent-Replayed") == "true"]
    in_flight = [r for r in responses if r.status_code == 409]
    assert len(fresh) == 1
    assert len(fresh) + len(replays) + len(in_flight) == 12
    assert all(r.json()["error"]["code"] == "request_in_progress" for r in in_flight)
    assert all(r.json() == fresh[0].json() for r in replays)
    assert Reservation.objects.filter(car=car).count() == 1


def send_a_duplicate_while_the_first_waits(client_for, *, duplicate_waits=contextlib.nullcontext):
    """The first request with a key waits inside its transaction for a car lock the test holds; a
    duplicate is sent meanwhile, inside ``duplicate_waits()`` (a shorter lock wait). Returns (the first's
    future, the duplicate, its seconds, the car)."""
    car, buyer = CarFactory(), UserFactory()
    first_client, duplicate_client = client_for(buyer), client_for(buyer)
    with elsewhere(f"SELECT 1 FROM {Car._meta.db_table} WHERE id = %s FOR UPDATE", [car.pk]) as locker:
        first = ThreadPoolExecutor(1).submit(hold, first_client, car, key="same")
        wait_for_a_wait_on(locker)
        started = time.monotonic()
        with duplicate_waits():
            duplicate = hold(duplicate_client, car, key="same")
        answered_in = time.monotonic() - started
        first_was_still_running = not first.done()
    return first, duplicate, answered_in, first_was_still_running, duplicate_client, car


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
@pytest.mark.slow
def test_a_duplicate_of_a_request_in_flight_is_answered_at_once(client_for):
    first, duplicate, answered_in, first_was_still_running, client, car = send_a_duplicate_while_the_first_waits(
        client_for
    )

    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "request_in_progress"
    assert answered_in < 2 and first_was_still_running  # no wait for the car's lock (DB_LOCK_TIMEOUT_MS: 5 s)
    assert first.result(10).status_code == 201
    again = hold(client, car, key="same")
    assert again.json() == first.result().json() and again["Idempotent-Replayed"] == "true"


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
@pytest.mark.slow
def test_control_without_the_advisory_lock_the_duplicate_waits_for_the_first(client_for, monkeypatch):
    from web import idempotency

    no_lock = idempotency._LOOKUP_SQL.replace("pg_try_advisory_xact_lock(%(lock)s)", "%(lock)s IS NOT NULL")
    monkeypatch.setattr(idempotency, "_LOOKUP_SQL", no_lock)

    # Without the advisory lock the duplicate is not refused at once: it queues for the car's lock behind
    # the first, until its lock wait ends (300 ms here, not DB_LOCK_TIMEOUT_MS: the same verdict, sooner).
    first, duplicate, _, _, _, _ = send_a_duplicate_while_the_first_waits(
        client_for, duplicate_waits=short_lock_timeout
    )

    assert duplicate.status_code == 503 and duplicate.json()["error"]["code"] == "busy"  # the test above would notice
    first.result(10)


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_a_request_whose_commit_waited_too_long_runs_again(staff, client_for, user):
    """Defect 1: a 503 ``busy`` from a lock wait at COMMIT (the deferred foreign-key check of the new
    reservation waits for the buyer's row), then, the lock released, the same key runs and succeeds."""
    car, api = CarFactory(), client_for(staff)
    with short_lock_timeout(), elsewhere(f"SELECT 1 FROM {User._meta.db_table} WHERE id = %s FOR UPDATE", [user.pk]):
        busy = hold(api, car, key="k-7", buyerId=user.pk)

    again = hold(api, car, key="k-7", buyerId=user.pk)

    assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy"
    assert again.status_code == 201 and "Idempotent-Replayed" not in again
    assert Reservation.objects.get().buyer == user


@pytest.mark.django_db(transaction=True)
def test_a_commit_that_fails_leaves_no_record(api, monkeypatch):
    from reservations import services

    car = CarFactory()
    real_hold = services.reservation_hold

    def hold_with_a_foreign_key_broken_at_commit(**kwargs):  # Django's foreign keys are checked at COMMIT
        reservation = real_hold(**kwargs)
        Reservation.objects.filter(pk=reservation.pk).update(buyer_id=10**12)
        return reservation

    monkeypatch.setattr(services, "reservation_hold", hold_with_a_foreign_key_broken_at_commit)
    api.raise_request_exception = False
    failed = hold(api, car, key="k-8")
    monkeypatch.setattr(services, "reservation_hold", real_hold)

    assert failed.status_code == 500
    assert not IdempotencyRecord.objects.exists() and not Reservation.objects.exists()
    assert hold(api, car, key="k-8").status_code == 201


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_that_got_past_the_lock_is_409(api, user, monkeypatch):
    """The lock is only a busy signal (two keys may share a hash): the unique constraint is the truth."""
    from web import idempotency

    hold(api, CarFactory(), key="k-9")
    car = CarFactory()
    monkeypatch.setattr(
        idempotency,
        "_LOOKUP_SQL",
        idempotency._LOOKUP_SQL.replace('"r"."key" = %(key)s', '"r"."key" = %(key)s || \'?\''),
    )

    response = hold(api, car, key="k-9")  # as if the lookup's snapshot predated the first one's COMMIT

    assert response.status_code == 409 and response.json()["error"]["code"] == "request_in_progress"
    assert not Reservation.objects.filter(car=car).exists()


def short_lock_timeout():
    return lock_timeout(300)


@contextmanager
def lock_timeout(ms: int):
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {int(ms)}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")


def wait_for_a_wait_on(locker, timeout: float = 10) -> None:
    """Until some backend waits for a lock the ``locker`` cursor's connection holds."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                [locker.connection.info.backend_pid],
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError("no request started waiting for the lock")


@pytest.mark.django_db
def test_a_record_past_its_ttl_frees_the_key(api, settings):
    first = hold(api, CarFactory(), key="k-10")
    IdempotencyRecord.objects.filter(key="k-10").update(
        created_at=timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS, seconds=1)
    )

    again = hold(api, CarFactory(), key="k-10")  # another body: within the TTL it would be a 422

    assert again.status_code == 201 and "Idempotent-Replayed" not in again
    assert again.json()["id"] != first.json()["id"]
    assert list(IdempotencyRecord.objects.values_list("response_body", flat=True)) == [again.json()]


@pytest.mark.django_db
def test_a_refusal_before_any_statement_is_stored_and_replayed(api):
    car = CarFactory()
    refused = hold(api, car, key="k-11", holdDurationMinutes=0)  # the handler sends nothing: the key goes alone

    again = hold(api, car, key="k-11", holdDurationMinutes=0)

    assert refused.status_code == again.status_code == 400 and again["Idempotent-Replayed"] == "true"
    assert again.json() == refused.json() and not Reservation.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_statement_prepared_behind_a_gate_that_stopped_it_is_prepared_again(api, settings):
    """psycopg records a statement it prepares in a pipeline as prepared before it hears back; behind a gate
    that stopped it, its Parse never ran. Replays past ``DB_PREPARE_THRESHOLD`` on a new connection put the
    hold's statement at its preparation behind the gate; the next hold still works (it was a 503,
    ``prepared statement "_pg3_…" does not exist``, before ``idempotency._forget_unprepared``)."""
    connection.close()
    car = CarFactory()
    first = hold(api, car, key="k-12")
    for _ in range(settings.DB_PREPARE_THRESHOLD + 1):
        assert hold(api, car, key="k-12")["Idempotent-Replayed"] == "true"

    assert hold(api, CarFactory()).status_code == 201
    assert first.status_code == 201


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
@pytest.mark.slow
def test_control_without_the_gate_the_duplicate_waits_for_the_first(client_for, monkeypatch):
    from web import idempotency

    monkeypatch.setattr(idempotency, "_GATE_SQL", "SELECT 1")

    # Without the gate the duplicate's hold runs behind its lookup, and queues for the lock the first holds
    # (2.5 s here, past the 2 s the test above allows) before the lookup's verdict answers 409.
    first, duplicate, answered_in, _, _, _ = send_a_duplicate_while_the_first_waits(
        client_for, duplicate_waits=lambda: lock_timeout(2500)
    )

    assert duplicate.status_code == 409 and answered_in >= 2  # the test above would notice
    first.result(10)
