"""The waiting list (docs/contract.md §5.8): joining, leaving, and freed seats offered to the head."""

from datetime import timedelta

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from core.audit.services import trail
from core.errors import HoldExpired, LimitReached, NotOwner
from core.expiry import expire_all
from events import selectors
from events.models import Event, SeatHoldGroup, WaitlistEntry
from events.services import events, rules, seat_holds, waitlist
from tests.events.factories import make_event, overdue_hold, violations, write_hold
from tests.factories import UserFactory, house
from web.webhooks.services import webhook_endpoint_create, webhooks_deliver

pytestmark = pytest.mark.django_db


def sold_out(total_seats=4, **fields):
    """An event whose seats are all held by one holder, and that hold."""
    event = make_event(total_seats=total_seats, **fields)
    group = seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), quantity=event.total_seats, now=timezone.now())
    return event, group


def join(event, user=None, quantity=1):
    return waitlist.waitlist_join(event_id=event.pk, user=user or UserFactory(), quantity=quantity, now=timezone.now())


def release(group):
    return seat_holds.seat_hold_release(
        event_id=group.event_id, hold_group_id=group.pk, user=group.user, now=timezone.now()
    )


def entry_of(entry) -> WaitlistEntry:
    return WaitlistEntry.objects.get(pk=entry.pk)


def waiting_count(event) -> int:
    return Event.objects.get(pk=event.pk).waiting_count


def test_joining_a_sold_out_event_puts_the_user_at_the_end():
    event, _ = sold_out()

    first, second = join(event, quantity=2), join(event)

    assert (first.state, first.position, second.position) == ("WAITING", 1, 2)
    assert waiting_count(event) == 2
    assert waitlist.waitlist_position(entry_of(second)) == 2
    assert [e.event_type for e in trail(waitlist.waitlist_entry_subject(first))] == ["CREATED"]


def test_joining_while_the_seats_are_free_is_refused_hold_them_instead():
    event = make_event(total_seats=4)

    with pytest.raises(rules.SeatsAvailable) as refused:
        join(event, quantity=4)

    assert refused.value.details == {"requested": 4, "available": 4}
    assert join(event, quantity=5).state == "WAITING"  # more than are free: the list is the way


def test_joining_twice_is_refused_with_the_entry_already_on_the_list(user):
    event, _ = sold_out()
    entry = join(event, user)

    with pytest.raises(rules.AlreadyWaiting) as refused:
        join(event, user, quantity=2)

    assert refused.value.details == {"entryId": entry.pk, "state": "WAITING"}


def test_the_quantity_is_bounded_by_the_cap_on_held_seats(settings):
    event, _ = sold_out()
    settings.EVENT_MAX_HELD_SEATS_PER_USER = 3

    with pytest.raises(LimitReached):
        join(event, quantity=4)


@pytest.mark.parametrize(
    ("fields", "error"),
    [({"waitlist_enabled": False}, rules.WaitlistClosed), ({"sales_open": False}, rules.SalesClosed)],
)
def test_a_closed_list_or_closed_sales_refuse_a_join(fields, error):
    event, _ = sold_out()
    Event.objects.filter(pk=event.pk).update(**fields)

    with pytest.raises(error):
        join(event)


def test_a_public_hold_is_refused_while_someone_waits():
    event = make_event(total_seats=4)
    seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), quantity=2, now=timezone.now())
    join(event, quantity=3)  # two are free: not enough

    for ask in ({"quantity": 1}, {"seat_codes": ["S4"]}):
        with pytest.raises(rules.WaitlistActive) as refused:
            seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), now=timezone.now(), **ask)
        assert refused.value.details == {"waitingCount": 1}


def test_a_release_offers_the_seats_to_the_head_as_a_hold_of_its_own():
    event, group = sold_out(layout=(("A",), 1, 4), total_seats=None)
    head, second = join(event, quantity=2), join(event, quantity=3)

    release(group)

    head = entry_of(head)
    offer = head.hold_group
    assert (head.state, offer.user_id, offer.state, offer.seat_count) == ("OFFERED", head.user_id, "HELD", 2)
    assert offer.expires_at == head.offer_expires_at
    assert offer.expires_at - offer.created_at == timedelta(minutes=event.hold_minutes)
    assert sorted(selectors.group_seat_codes(offer)) == ["A-1-1", "A-1-2"]  # adjacent, front first
    assert entry_of(second).state == "WAITING"  # strict order: 3 do not fit the 2 left
    assert waiting_count(event) == 1
    created, offered = trail(rules.hold_subject(offer)), trail(waitlist.waitlist_entry_subject(head))
    assert [(e.event_type, e.actor_label) for e in created] == [("CREATED", "system:waitlist")]
    assert [e.event_type for e in offered] == ["CREATED", "OFFERED"]
    assert offered.last().metadata["seatCodes"] == ["A-1-1", "A-1-2"]
    assert violations(event) == []


def test_one_release_offers_to_as_many_heads_as_fit_in_order():
    event, group = sold_out(total_seats=4)
    entries = [join(event, quantity=q) for q in (1, 2, 1, 1)]

    release(group)

    assert [entry_of(e).state for e in entries] == ["OFFERED", "OFFERED", "OFFERED", "WAITING"]
    assert waiting_count(event) == 1


def test_the_head_waits_for_its_whole_quantity_even_when_the_next_would_fit():
    event = make_event(total_seats=4)
    small = seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), quantity=1, now=timezone.now())
    seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), quantity=3, now=timezone.now())
    head, behind = join(event, quantity=2), join(event, quantity=1)

    release(small)

    assert (entry_of(head).state, entry_of(behind).state) == ("WAITING", "WAITING")


def test_confirming_an_offer_accepts_it():
    event, group = sold_out()
    entry = join(event)
    release(group)
    offer = entry_of(entry).hold_group

    seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=offer.pk, user=entry.user, now=timezone.now())

    assert entry_of(entry).state == "ACCEPTED"
    assert [e.event_type for e in trail(waitlist.waitlist_entry_subject(entry))] == ["CREATED", "OFFERED", "ACCEPTED"]


@pytest.mark.parametrize("how", ["released", "expired by the job", "expired on a confirm", "expired by an operator"])
def test_an_offer_that_lapses_expires_the_entry_and_goes_to_the_next(how, staff):
    event, group = sold_out()
    first, second = join(event, quantity=4), join(event, quantity=4)
    release(group)
    offer = entry_of(first).hold_group
    later = timezone.now() + timedelta(minutes=event.hold_minutes + 1)

    if how == "released":
        release(offer)
    elif how == "expired by the job":
        assert expire_all(now=later)["events"] == 1
    elif how == "expired on a confirm":
        with pytest.raises(HoldExpired):
            seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=offer.pk, user=first.user, now=later)
    else:
        seat_holds.seat_hold_expire(hold_group_id=offer.pk, user=staff, now=timezone.now())

    assert entry_of(first).state == "EXPIRED"
    assert entry_of(second).state == "OFFERED"
    assert entry_of(second).hold_group.seat_count == 4
    assert violations(event) == []


def test_a_cancelled_booking_offers_its_seats():
    event, group = sold_out()
    seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=group.user, now=timezone.now())
    entry = join(event, quantity=2)
    booking = SeatHoldGroup.objects.get(pk=group.pk).booking_group_id

    seat_holds.seat_booking_cancel(booking_group_id=booking, user=group.user, now=timezone.now())

    assert entry_of(entry).state == "OFFERED"
    assert violations(event) == []


def test_the_expiry_job_offers_the_seats_of_the_holds_it_expires():
    event, _ = sold_out(total_seats=2)
    entry = join(event, quantity=2)
    later = timezone.now() + timedelta(minutes=event.hold_minutes + 1)

    expire_all(now=later)

    assert entry_of(entry).state == "OFFERED"
    assert entry_of(entry).offer_expires_at == later + timedelta(minutes=event.hold_minutes)


def test_an_offer_never_takes_a_seat_an_overdue_hold_still_has():
    event = make_event(total_seats=3)
    overdue_hold(event, ["S1"])
    group = write_hold(event, ["S2", "S3"])
    entry = join(event, quantity=3)

    release(group)

    assert entry_of(entry).state == "WAITING"  # S1 is free for clients, but still the overdue hold's row
    expire_all(now=timezone.now())
    assert entry_of(entry).state == "OFFERED"


def test_leaving_moves_the_others_up_and_the_next_may_fit_now(user):
    event = make_event(total_seats=4)
    seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), quantity=2, now=timezone.now())
    head, behind = join(event, user, quantity=3), join(event, quantity=2)

    left = waitlist.waitlist_leave(event_id=event.pk, entry_id=head.pk, user=user, now=timezone.now())

    assert left.state == entry_of(head).state == "LEFT"
    assert entry_of(behind).state == "OFFERED"
    assert waiting_count(event) == 0
    assert [e.event_type for e in trail(waitlist.waitlist_entry_subject(head))] == ["CREATED", "LEFT"]


def test_only_the_owner_or_an_operator_removes_an_entry_and_only_while_it_waits(user, other_user, staff):
    event, group = sold_out()
    entry = join(event, user)

    with pytest.raises(NotOwner):
        waitlist.waitlist_leave(event_id=event.pk, entry_id=entry.pk, user=other_user, now=timezone.now())
    release(group)
    with pytest.raises(rules.EntryNotWaiting):
        waitlist.waitlist_leave(event_id=event.pk, entry_id=entry.pk, user=staff, now=timezone.now())


def test_offers_wait_while_sales_are_closed_and_come_when_they_open(staff):
    event, group = sold_out()
    entry = join(event)
    events.event_sales_set(event_id=event.pk, sales_open=False, actor=staff, now=timezone.now())

    release(group)
    assert entry_of(entry).state == "WAITING"

    events.event_sales_set(event_id=event.pk, sales_open=True, actor=staff, now=timezone.now())
    assert entry_of(entry).state == "OFFERED"


def test_a_public_hold_expiring_an_overdue_offer_lapses_its_entry():
    event, group = sold_out(total_seats=2)
    entry = join(event, quantity=2)
    release(group)
    later = timezone.now() + timedelta(minutes=event.hold_minutes + 1)

    seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), seat_codes=["S1"], now=later)

    assert entry_of(entry).state == "EXPIRED"
    assert trail(waitlist.waitlist_entry_subject(entry)).last().event_type == "EXPIRED"


def test_turning_the_list_off_is_audited(staff):
    event = make_event()

    waitlist.waitlist_set(event_id=event.pk, enabled=False, actor=staff, now=timezone.now())

    assert not Event.objects.get(pk=event.pk).waitlist_enabled
    assert trail(event).last().metadata["fields"] == ["waitlist_enabled"]


# --- the API --------------------------------------------------------------------------------------


def test_joining_through_the_api(api, user):
    event, _ = sold_out()

    response = api.post(f"/api/events/{event.pk}/waitlist", {"quantity": 2}, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert {k: body[k] for k in ("position", "state", "quantity", "holdGroupId", "offerExpiresAt")} == {
        "position": 1,
        "state": "WAITING",
        "quantity": 2,
        "holdGroupId": None,
        "offerExpiresAt": None,
    }
    assert body["userId"] == user.pk
    assert api.get(f"/api/events/{event.pk}").json()["waitingCount"] == 1
    assert api.get(f"/api/events/{event.pk}/waitlist/{body['entryId']}").json() == body


def test_a_join_with_a_request_id_is_answered_once(api):
    event, _ = sold_out()

    first = api.post(f"/api/events/{event.pk}/waitlist", {"quantity": 1, "requestId": "j-1"}, format="json")
    again = api.post(f"/api/events/{event.pk}/waitlist", {"quantity": 1, "requestId": "j-1"}, format="json")

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert WaitlistEntry.objects.filter(event=event).count() == 1


@pytest.mark.parametrize(
    ("setup", "code"),
    [("free", "seats_available"), ("twice", "already_waiting"), ("off", "waitlist_closed")],
)
def test_join_refusals_through_the_api(api, user, setup, code):
    event = make_event(total_seats=4) if setup == "free" else sold_out()[0]
    if setup == "twice":
        join(event, user)
    if setup == "off":
        Event.objects.filter(pk=event.pk).update(waitlist_enabled=False)

    response = api.post(f"/api/events/{event.pk}/waitlist", {"quantity": 2}, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == code


def test_a_hold_while_someone_waits_is_409_waitlist_active(api):
    event = make_event(total_seats=4)
    seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), quantity=3, now=timezone.now())
    join(event, quantity=2)

    response = api.post(f"/api/events/{event.pk}/seats/reserve", {"quantity": 1}, format="json")

    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "waitlist_active",
        "message": response.json()["error"]["message"],
        "details": {"waitingCount": 1},
    }


def test_leaving_through_the_api(api, user, client_for, other_user):
    event, _ = sold_out()
    entry = join(event, user)
    path = f"/api/events/{event.pk}/waitlist/{entry.pk}"

    assert client_for(other_user).get(path).status_code == 403
    assert client_for(other_user).delete(path).status_code == 403
    response = api.delete(path)

    assert response.status_code == 200
    assert (response.json()["state"], response.json()["position"]) == ("LEFT", None)
    assert api.delete(path).json()["error"]["code"] == "waitlist_entry_not_waiting"
    assert api.get(f"/api/events/{event.pk}/waitlist/999999").status_code == 404


def test_an_offer_reads_as_its_hold_and_expired_once_the_hold_is_overdue(api, user, monkeypatch):
    event, group = sold_out()
    entry = join(event, user, quantity=2)
    release(group)
    path = f"/api/events/{event.pk}/waitlist/{entry.pk}"

    offered = api.get(path).json()
    assert (offered["state"], offered["position"]) == ("OFFERED", None)
    assert offered["holdGroupId"] == str(entry_of(entry).hold_group_id)
    hold = api.get(f"/api/events/holds/{offered['holdGroupId']}").json()
    assert (hold["userId"], hold["state"], len(hold["seatCodes"])) == (user.pk, "HELD", 2)

    WaitlistEntry.objects.filter(pk=entry.pk).update(offer_expires_at=timezone.now() - timedelta(seconds=1))
    assert api.get(path).json()["state"] == "EXPIRED"


def test_a_cancellation_hands_a_sold_out_events_seats_to_the_first_who_gets_the_webhook_and_confirms(
    client_for, receiver
):
    """Done means (issue 12): the event sells out, users join its list, a cancellation hands its seats
    to the first of them, who receives the offer as a webhook and confirms it."""
    endpoint = webhook_endpoint_create(
        organisation_id=house().pk, url=receiver.url, event_types=["waitlist_entry.offered"], now=timezone.now()
    )
    event = make_event(total_seats=4)
    buyer, first, second = (client_for(UserFactory()) for _ in range(3))
    hold = buyer.post(f"/api/events/{event.pk}/seats/reserve", {"quantity": 4}, format="json").json()
    booking = buyer.post(f"/api/events/{event.pk}/seats/confirm", {"holdGroupId": hold["holdGroupId"]}, format="json")
    joined = [c.post(f"/api/events/{event.pk}/waitlist", {"quantity": 2}, format="json") for c in (first, second)]
    assert [j.json()["position"] for j in joined] == [1, 2]

    cancelled = buyer.post(f"/api/events/bookings/{booking.json()['bookingGroupId']}/cancel", {}, format="json")
    assert cancelled.status_code == 200
    assert webhooks_deliver().delivered == 2  # both fit: the first, then the second

    offers = [Webhook(endpoint.secret).verify(r.body, r.headers) for r in receiver.received]
    assert [o["type"] for o in offers] == ["waitlist_entry.offered"] * 2
    offer = offers[0]["data"]
    assert offer["subject"] == {"type": "waitlist_entry", "id": str(joined[0].json()["entryId"])}
    assert (offer["actor"], offer["fromState"], offer["toState"]) == ("system:waitlist", "WAITING", "OFFERED")
    assert len(offer["metadata"]["seatCodes"]) == 2
    confirmed = first.post(
        f"/api/events/{event.pk}/seats/confirm", {"holdGroupId": offer["metadata"]["holdGroupId"]}, format="json"
    )
    assert confirmed.status_code == 200
    assert sorted(confirmed.json()["seatCodes"]) == offer["metadata"]["seatCodes"]
    entry = first.get(f"/api/events/{event.pk}/waitlist/{joined[0].json()['entryId']}").json()
    assert (entry["state"], entry["holdGroupId"]) == ("ACCEPTED", offer["metadata"]["holdGroupId"])
    assert violations(event) == []
