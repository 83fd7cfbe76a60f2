"""The lean write path for seats (issue "One claim engine with a lean write path", section 2; issue 18):
round trips to PostgreSQL per seat hold, confirm, release and cancel over HTTP on the cached-token path,
counting BEGIN and COMMIT (``tests.round_trips``). A hold is one statement in autocommit, granted or
refused (docs/decisions/0022-one-statement-holds.md); the waiter's fallback is pinned in
``tests/events/test_concurrency.py``."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core.audit.services import trail
from events import queue
from events.models import Event, SeatClaim, SeatHoldGroup, WaitlistEntry
from events.services import events, waitlist
from events.services.rules import hold_subject
from tests.events.factories import make_event, overdue_hold, violations, write_hold
from tests.factories import UserFactory
from tests.round_trips import round_trips

pytestmark = pytest.mark.django_db(transaction=True)


def reserve(api, event, **body):
    return api.post(f"/api/events/{event.pk}/seats/reserve", body, format="json")


@pytest.mark.parametrize("codes", [["S1"], ["S1", "S2", "S3", "S4"]])
def test_a_seat_hold_by_codes_is_one_statement_in_autocommit(cached_api_of, codes):
    event, user = make_event(), UserFactory()
    api = cached_api_of(user)

    with round_trips() as trips:
        response = reserve(api, event, seatCodes=codes)

    assert response.status_code == 201, response.content
    assert trips.count == 1, trips.statements
    assert not any(s.startswith(("BEGIN", "COMMIT")) for s in trips.statements), trips.statements
    assert response.json()["seatCodes"] == codes
    group = SeatHoldGroup.objects.get(pk=response.json()["holdGroupId"])
    [created] = trail(hold_subject(group))
    assert (created.event_type, created.to_state, created.actor_id) == ("CREATED", "HELD", user.pk)
    assert created.metadata["seatCodes"] == codes
    assert SeatClaim.objects.filter(group=group, state="HELD").count() == len(codes)
    assert violations(event) == []


def test_a_seat_hold_that_expires_an_overdue_hold_first_is_one_round_trip(cached_api_of):
    event = make_event()
    overdue = overdue_hold(event, ["S1", "S2"])
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = reserve(api, event, seatCodes=["S2", "S3"])

    assert response.status_code == 201, response.content
    assert trips.count == 1, trips.statements
    overdue.refresh_from_db()
    assert overdue.state == "EXPIRED"
    assert set(overdue.claims.values_list("state", flat=True)) == {"EXPIRED"}
    assert [(e.event_type, e.actor_label) for e in trail(hold_subject(overdue))] == [("EXPIRED", "system:expire_holds")]
    assert violations(event) == []


@pytest.mark.parametrize("quantity", [1, 4])
def test_a_best_available_hold_is_one_round_trip(cached_api_of, quantity):
    event = make_event(layout=(("A", "B"), 5, 10))
    write_hold(event, ["A-1-2"], state="CONFIRMED")
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = reserve(api, event, quantity=quantity)

    assert response.status_code == 201, response.content
    assert trips.count == 1, trips.statements
    assert len(response.json()["seatCodes"]) == quantity
    assert violations(event) == []


def test_a_hold_refused_because_a_seat_is_taken_is_one_round_trip(cached_api_of, client_for):
    event = make_event()
    write_hold(event, ["S2"])
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = reserve(api, event, seatCodes=["S1", "S2"])

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "seats_unavailable"
    assert trips.count == 1, trips.statements


@pytest.mark.parametrize("body", [{"seatCodes": ["S1"]}, {"quantity": 1}])
def test_a_hold_refused_because_sales_are_closed_is_one_round_trip(cached_api_of, body):
    event = make_event(sales_open=False)
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = reserve(api, event, **body)

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "sales_closed"
    assert trips.count == 1, trips.statements


def test_a_best_available_hold_refused_for_lack_of_seats_is_one_round_trip(cached_api_of):
    event = make_event(total_seats=2)
    write_hold(event, ["S1"], state="CONFIRMED")
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = reserve(api, event, quantity=2)

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "seats_unavailable"
    assert trips.count == 1, trips.statements


@pytest.mark.parametrize(("path", "state"), [("confirm", "CONFIRMED"), ("release", "RELEASED")])
def test_a_confirm_or_a_release_is_one_round_trip(cached_api_of, path, state):
    event, user = make_event(), UserFactory()
    group = write_hold(event, ["S1", "S2"], user=user)
    api = cached_api_of(user)

    with round_trips() as trips:
        response = api.post(f"/api/events/{event.pk}/seats/{path}", {"holdGroupId": str(group.pk)}, format="json")

    assert response.status_code == 200, response.content
    assert trips.count == 1, trips.statements  # the statement, in autocommit: no BEGIN, no COMMIT
    if path == "confirm":
        assert response.json()["seatCodes"] == ["S1", "S2"]
    group.refresh_from_db()
    assert group.state == state
    assert set(group.claims.values_list("state", flat=True)) == {state}
    assert [(e.event_type, e.from_state, e.actor_id) for e in trail(hold_subject(group))] == [(state, "HELD", user.pk)]
    assert Event.objects.get(pk=event.pk).confirmed_seats == (2 if state == "CONFIRMED" else 0)
    assert violations(event) == []


def test_a_booking_cancel_is_one_round_trip(cached_api_of):
    event, user = make_event(), UserFactory()
    group = write_hold(event, ["S1", "S2"], user=user, state="CONFIRMED")
    api = cached_api_of(user)

    with round_trips() as trips:
        response = api.post(f"/api/events/bookings/{group.booking_group_id}/cancel", {"reason": "ill"}, format="json")

    assert response.status_code == 200, response.content
    assert trips.count == 1, trips.statements  # the statement, in autocommit: no BEGIN, no COMMIT
    group.refresh_from_db()
    assert group.state == "CANCELLED" and group.cancelled_at is not None
    assert set(group.claims.values_list("state", flat=True)) == {"CANCELLED"}
    assert Event.objects.get(pk=event.pk).confirmed_seats == 0
    [cancelled] = trail(hold_subject(group))
    assert (cancelled.from_state, cancelled.to_state, cancelled.metadata["reason"]) == ("CONFIRMED", "CANCELLED", "ill")
    assert violations(event) == []


def test_a_hold_refused_by_the_cap_on_held_seats_is_one_round_trip(cached_api_of):
    """The cap costs no statement of its own: the hold's statement counts the user's held seats (from its
    snapshot; under the holder's lock when the snapshot lets the hold through) and refuses, nothing to
    roll back."""
    event, user = make_event(total_seats=20), UserFactory()
    write_hold(event, [f"S{n}" for n in range(1, 10)], user=user)
    api = cached_api_of(user)

    with round_trips() as trips:
        response = reserve(api, event, seatCodes=["S10", "S11"])

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "limit_reached"
    assert trips.count == 1, trips.statements


# The waiting list (docs/decisions/0016-waiting-list.md).


def test_a_hold_refused_because_someone_waits_is_one_round_trip(cached_api_of):
    event = make_event(total_seats=2)
    write_hold(event, ["S1"])
    waitlist.waitlist_join(event_id=event.pk, user=UserFactory(), quantity=2, now=timezone.now())
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = reserve(api, event, seatCodes=["S2"])

    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "waitlist_active"
    assert trips.count == 1, trips.statements  # the waiting counter is read by the hold's statement


@pytest.mark.parametrize("anyone_waiting", [False, True])
def test_joining_the_waiting_list_is_four_round_trips(cached_api_of, anyone_waiting):
    event = make_event(total_seats=2)
    write_hold(event, ["S1", "S2"])
    if anyone_waiting:
        waitlist.waitlist_join(event_id=event.pk, user=UserFactory(), quantity=1, now=timezone.now())
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = api.post(f"/api/events/{event.pk}/waitlist", {"quantity": 1}, format="json")

    assert response.status_code == 201, response.content
    # BEGIN, the event's lock, one statement (the user's live entry, the free seats while nobody waits, the
    # entry, the counter, the audit event: ``services.WAITLIST_JOIN``), COMMIT.
    assert trips.count <= 4, trips.statements


def test_leaving_the_waiting_list_is_five_round_trips(cached_api_of):
    event, user = make_event(total_seats=2), UserFactory()
    write_hold(event, ["S1", "S2"])
    waitlist.waitlist_join(event_id=event.pk, user=UserFactory(), quantity=1, now=timezone.now())
    entry = waitlist.waitlist_join(event_id=event.pk, user=user, quantity=1, now=timezone.now())
    api = cached_api_of(user)

    with round_trips() as trips:
        response = api.delete(f"/api/events/{event.pk}/waitlist/{entry.pk}")

    assert response.status_code == 200, response.content
    # BEGIN, the event's lock, the entry (and whether it is the head), the entry's LEFT with the counter and
    # the audit event (``services.WAITLIST_LEAVE``), COMMIT.
    assert trips.count <= 5, trips.statements
    assert Event.objects.get(pk=event.pk).waiting_count == 1 and violations(event) == []


def test_a_release_that_offers_its_seats_to_the_head_is_nine_round_trips(cached_api_of):
    event, user = make_event(total_seats=2), UserFactory()
    group = write_hold(event, ["S1", "S2"], user=user)
    head = waitlist.waitlist_join(event_id=event.pk, user=UserFactory(), quantity=2, now=timezone.now())
    api = cached_api_of(user)

    with round_trips() as trips:
        response = api.post(f"/api/events/{event.pk}/seats/release", {"holdGroupId": str(group.pk)}, format="json")

    assert response.status_code == 200, response.content
    # The release's statement in autocommit (it takes the event's lock, reads the waiting counter and
    # writes nothing: the seats free while people wait), BEGIN, the statement again, then the offer: the
    # head, a savepoint, the hold's one statement (best available, locking no seat), its release, the
    # entry's OFFERED with the counter and the audit event (none left waiting), COMMIT.
    assert trips.count == 9, trips.statements
    assert WaitlistEntry.objects.get(pk=head.pk).state == "OFFERED"
    assert violations(event) == []


# --- the admission queue (docs/decisions/0017-admission-queue.md) ---------------------------------------


def queued(event):
    return events.event_update_details(event_id=event.pk, actor=None, now=timezone.now(), queue_enabled=True)


def admitted_token(event, user) -> str:
    entry, _ = queue.queue_join(event_id=event.pk, user=user, now=timezone.now())
    queue.queue_admit(event_id=event.pk, now=timezone.now() + timedelta(minutes=1))
    return entry.token


@pytest.mark.parametrize("body", [{"seatCodes": ["S1", "S2"]}, {"quantity": 2}])
def test_a_hold_through_the_queue_is_still_one_round_trip(cached_api_of, body):
    """The admission is read by the hold's statement: the queue costs no statement of its own."""
    event, user = queued(make_event()), UserFactory()
    token = admitted_token(event, user)
    api = cached_api_of(user)

    with round_trips() as trips:
        response = api.post(f"/api/events/{event.pk}/seats/reserve", body, format="json", HTTP_X_QUEUE_TOKEN=token)

    assert response.status_code == 201, response.content
    assert trips.count == 1, trips.statements


def test_a_hold_refused_for_want_of_an_admission_is_one_round_trip(cached_api_of):
    event = queued(make_event())
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = reserve(api, event, seatCodes=["S1"])

    assert response.status_code == 403, response.content
    assert response.json()["error"]["code"] == "not_admitted"
    assert trips.count == 1, trips.statements


def test_a_poll_of_a_queue_entry_is_one_round_trip(cached_api_of):
    event, user = queued(make_event()), UserFactory()
    entry, _ = queue.queue_join(event_id=event.pk, user=user, now=timezone.now())
    api = cached_api_of(user)

    with round_trips() as trips:
        response = api.get(f"/api/events/{event.pk}/queue/{entry.token}")

    assert response.status_code == 200, response.content
    assert trips.count == 1, trips.statements


def test_a_join_is_five_round_trips_and_joining_again_one(cached_api_of):
    """A read (the event's switch and any entry of the user), then BEGIN, the number (the queue row's
    lock), the entry with its audit event, COMMIT."""
    event, user = queued(make_event()), UserFactory()
    api = cached_api_of(user)

    with round_trips() as first:
        created = api.post(f"/api/events/{event.pk}/queue")
    with round_trips() as again:
        repeated = api.post(f"/api/events/{event.pk}/queue")

    assert (created.status_code, repeated.status_code) == (201, 200)
    assert first.count <= 5, first.statements
    assert again.count == 1, again.statements


def test_a_partial_cancel_is_five_round_trips(cached_api_of):
    """A transaction (ADR 0023): BEGIN, the booking's lock, its seats read under it, the cancel's statement,
    COMMIT."""
    event, user = make_event(), UserFactory()
    group = write_hold(event, ["S1", "S2", "S3"], user=user, state="CONFIRMED")
    api = cached_api_of(user)

    with round_trips() as trips:
        response = api.post(
            f"/api/events/bookings/{group.booking_group_id}/cancel", {"seatCodes": ["S2"]}, format="json"
        )

    assert response.status_code == 200, response.content
    assert trips.count <= 5, trips.statements
    assert sorted(response.json()["seatCodes"]) == ["S1", "S3"]


def test_a_seat_hold_with_a_key_is_two_round_trips(cached_api_of):
    """With an Idempotency-Key (docs/decisions/0003-idempotency.md): BEGIN, the lookup and its gate ride in
    front of the hold's one statement, inside the request's transaction; the record's INSERT with the
    COMMIT."""
    event = make_event()
    api = cached_api_of(UserFactory())

    with round_trips() as trips:
        response = api.post(
            f"/api/events/{event.pk}/seats/reserve",
            {"seatCodes": ["S1", "S2"]},
            format="json",
            HTTP_IDEMPOTENCY_KEY="k-1",
        )

    assert response.status_code == 201, response.content
    assert trips.count == 2, trips.statements
    assert violations(event) == []
