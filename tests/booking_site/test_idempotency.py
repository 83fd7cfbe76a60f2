"""Idempotency-Key (SPEC 3.4), exercised through the car reservation endpoints."""

from datetime import timedelta

import pytest
from django.utils import timezone

from booking_site.idempotency import idempotency_prune
from booking_site.models import IdempotencyRecord
from reservations.models import Reservation
from tests.concurrency import run_concurrently
from tests.factories import UserFactory
from tests.reservations.factories import CarFactory


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
@pytest.mark.parametrize("body", [{"requestId": 5}, {"requestId": ""}, {"requestId": "x" * 256}])
def test_bad_request_ids_are_400(api, body):
    assert hold(api, CarFactory(), **body).status_code == 400


@pytest.mark.django_db
def test_a_key_too_long_is_400(api):
    assert hold(api, CarFactory(), key="x" * 256).status_code == 400


@pytest.mark.django_db
def test_a_request_in_flight_answers_409_with_retry_after(api, user):
    car = CarFactory()
    hold(api, car, key="k-4")
    IdempotencyRecord.objects.filter(key="k-4").update(response_status=None, response_body=None)  # still running

    response = hold(api, car, key="k-4")

    assert response.status_code == 409 and response.json()["error"]["code"] == "request_in_progress"
    assert response["Retry-After"] == "1"


@pytest.mark.django_db
def test_a_claim_abandoned_by_a_dead_process_is_taken_over(api, settings):
    car = CarFactory()
    hold(api, car, key="k-5")
    Reservation.objects.all().delete()  # the process died: its transaction never committed
    IdempotencyRecord.objects.filter(key="k-5").update(
        response_status=None, created_at=timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_STALE_SECONDS + 1)
    )

    response = hold(api, car, key="k-5")

    assert response.status_code == 201 and "Idempotent-Replayed" not in response


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
