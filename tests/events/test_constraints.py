"""Every invariant has a constraint that refuses a direct bad write, whatever the Python does."""

import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from events.models import Event, EventQueue, QueueEntry, Seat, SeatClaim, SeatHoldGroup, WaitlistEntry
from tests.events.factories import EventFactory, make_event, write_hold
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def refused(write) -> bool:
    try:
        with transaction.atomic():
            write()
    except IntegrityError:
        return True
    return False


@pytest.mark.parametrize(
    "fields",
    [
        {"total_seats": 0},
        {"hold_minutes": 0},
        {"hold_minutes": 61},
        {"confirmed_seats": 11},
        {"confirmed_seats": -1},
        {"waiting_count": -1},
        {"admitted_per_minute": 0},
        {"admitted_per_minute": 10_001},
        {"admission_window_minutes": 0},
        {"admission_window_minutes": 121},
    ],
)
def test_event_checks(fields):
    assert refused(lambda: EventFactory(**fields))


def test_event_counter_cannot_pass_the_total():
    event = EventFactory(total_seats=2)

    assert refused(lambda: Event.objects.filter(pk=event.pk).update(confirmed_seats=3))


def test_seat_code_is_unique_per_event_but_not_across_events():
    event, other = make_event(total_seats=2), make_event(total_seats=2)

    assert refused(lambda: Seat.objects.create(event=event, code="S1", row=9, number=9))
    assert not refused(lambda: Seat.objects.create(event=other, code="X9", row=9, number=9))


def test_seat_position_is_unique_and_positive():
    event = make_event(total_seats=2)

    assert refused(lambda: Seat.objects.create(event=event, code="other", row=1, number=1))
    assert refused(lambda: Seat.objects.create(event=event, code="zero", row=0, number=5))


def hold_row(event, **fields):
    now = timezone.now()
    values = {
        "event": event,
        "user": UserFactory(),
        "state": "HELD",
        "seat_count": 1,
        "expires_at": now + timedelta(minutes=5),
        "created_at": now,
        "updated_at": now,
        **fields,
    }
    return SeatHoldGroup.objects.create(**values)


@pytest.mark.parametrize(
    "fields",
    [
        {"state": "LOST"},
        {"seat_count": 0},
        {"seat_count": 51},
        {"expires_at": timezone.now() - timedelta(days=1)},
        {"state": "CONFIRMED"},
        {"state": "CANCELLED"},
        {"state": "HELD", "booking_group_id": uuid.uuid4()},
        {"state": "EXPIRED", "booking_group_id": uuid.uuid4()},
    ],
)
def test_hold_group_checks(fields):
    event = make_event(total_seats=1)

    assert refused(lambda: hold_row(event, **fields))


def test_booking_group_id_is_unique():
    event = make_event(total_seats=2)
    booking = uuid.uuid4()
    hold_row(event, state="CONFIRMED", booking_group_id=booking)

    assert refused(lambda: hold_row(event, state="CONFIRMED", booking_group_id=booking))


def claim(group, seat, state="HELD"):
    return SeatClaim.objects.create(group=group, event=seat.event, seat=seat, state=state, expires_at=group.expires_at)


@pytest.mark.parametrize("first, second", [("HELD", "HELD"), ("HELD", "CONFIRMED"), ("CONFIRMED", "CONFIRMED")])
def test_a_seat_is_in_one_active_claim_at_most(first, second):
    event = make_event(total_seats=1)
    seat = Seat.objects.get(event=event)
    write_hold(event, ["S1"], state=first)

    assert refused(lambda: claim(hold_row(event), seat, state=second))


@pytest.mark.parametrize("inactive", ["RELEASED", "EXPIRED", "CANCELLED"])
def test_inactive_claims_do_not_block(inactive):
    event = make_event(total_seats=1)
    seat = Seat.objects.get(event=event)
    write_hold(event, ["S1"], state=inactive)

    assert not refused(lambda: claim(hold_row(event), seat))


def test_a_claim_cannot_come_back_to_life_over_an_active_one():
    event = make_event(total_seats=1)
    old = write_hold(event, ["S1"], state="EXPIRED")
    write_hold(event, ["S1"])

    assert refused(lambda: SeatClaim.objects.filter(group=old).update(state="HELD"))


def test_a_group_claims_a_seat_once():
    event = make_event(total_seats=1)
    seat = Seat.objects.get(event=event)
    group = write_hold(event, ["S1"], state="EXPIRED")

    assert refused(lambda: claim(group, seat, state="EXPIRED"))


def test_claim_state_is_valid():
    event = make_event(total_seats=1)
    seat = Seat.objects.get(event=event)

    assert refused(lambda: claim(hold_row(event), seat, state="LOST"))


def test_a_claims_seat_belongs_to_the_claims_event():
    event, other = make_event(total_seats=1), make_event(total_seats=1)
    foreign_seat = Seat.objects.get(event=other)
    group = hold_row(event)

    assert refused(
        lambda: SeatClaim.objects.create(
            group=group, event=event, seat=foreign_seat, state="HELD", expires_at=group.expires_at
        )
    )


def write_entry(event, **fields):
    now = timezone.now()
    fields.setdefault("user", UserFactory())
    fields.setdefault("quantity", 1)
    return WaitlistEntry.objects.create(event=event, created_at=now, updated_at=now, **fields)


def test_one_live_waitlist_entry_per_user_per_event():
    event, user = make_event(total_seats=2), UserFactory()
    write_entry(event, user=user)
    group = write_hold(event, ["S1"])

    assert refused(lambda: write_entry(event, user=user))
    assert refused(
        lambda: write_entry(event, user=user, state="OFFERED", hold_group=group, offer_expires_at=group.expires_at)
    )
    assert not refused(
        lambda: write_entry(event, user=user, state="ACCEPTED", hold_group=group, offer_expires_at=group.expires_at)
    )
    assert not refused(lambda: write_entry(event, user=user, state="LEFT"))  # an ended entry does not count
    assert not refused(lambda: write_entry(EventFactory(), user=user))


@pytest.mark.parametrize("quantity", [0, 51])
def test_a_waitlist_entry_waits_for_1_to_50_seats(quantity):
    assert refused(lambda: write_entry(EventFactory(), quantity=quantity))


def test_a_waitlist_entry_state_is_one_of_its_states():
    assert refused(lambda: write_entry(EventFactory(), state="MAYBE"))


@pytest.mark.parametrize(
    ("state", "offered"),
    [("WAITING", True), ("LEFT", True), ("OFFERED", False), ("ACCEPTED", False), ("EXPIRED", False)],
)
def test_an_entry_has_a_hold_group_exactly_when_it_was_offered(state, offered):
    event = make_event(total_seats=2)
    offer = {"hold_group": write_hold(event, ["S1"]), "offer_expires_at": timezone.now()} if offered else {}

    assert refused(lambda: write_entry(event, state=state, **offer))


def test_a_hold_group_is_the_offer_of_one_entry_at_most():
    event = make_event(total_seats=2)
    group = write_hold(event, ["S1"])
    write_entry(event, state="OFFERED", hold_group=group, offer_expires_at=group.expires_at)

    assert refused(lambda: write_entry(event, state="EXPIRED", hold_group=group, offer_expires_at=group.expires_at))


# --- the admission queue -------------------------------------------------------------------------------


MOMENT = timezone.now()


def entry(event, number: int, **fields) -> QueueEntry:
    now = timezone.now()
    return QueueEntry.objects.create(
        event=event,
        user=fields.pop("user", None) or UserFactory(),
        token=fields.pop("token", None) or uuid.uuid4().hex,
        number=number,
        joined_at=now,
        **fields,
    )


def test_a_queue_never_admits_past_what_it_gave_out():
    event = EventFactory()
    EventQueue.objects.create(event=event, joined=3, admitted_through=3, credit_from=timezone.now())

    assert refused(lambda: EventQueue.objects.filter(pk=event.pk).update(admitted_through=4))
    assert refused(lambda: EventQueue.objects.filter(pk=event.pk).update(admitted_through=-1))


def test_one_queue_entry_per_user_per_event_and_one_per_number():
    event, other = EventFactory(), EventFactory()
    first = entry(event, 1)

    assert refused(lambda: entry(event, 2, user=first.user))
    assert refused(lambda: entry(event, 1))
    assert not refused(lambda: entry(other, 1, user=first.user))


@pytest.mark.parametrize(
    "fields",
    [
        {"state": "LEFT"},
        {"state": "ADMITTED"},  # admitted without a window
        {"state": "WAITING", "admitted_at": timezone.now(), "admitted_until": timezone.now() + timedelta(minutes=1)},
        {"state": "EXPIRED", "admitted_at": MOMENT, "admitted_until": MOMENT},  # a window of no length
    ],
)
def test_queue_entry_checks(fields):
    event = EventFactory()

    assert refused(lambda: entry(event, 1, **fields))
    assert refused(lambda: entry(event, 0))


def test_queue_entry_tokens_are_unique():
    event = EventFactory()
    first = entry(event, 1)

    assert refused(lambda: entry(event, 2, token=first.token))
