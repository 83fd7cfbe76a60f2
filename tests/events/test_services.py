import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core import errors
from core.audit.models import AuditEvent
from core.audit.services import trail
from core.errors import Forbidden, HoldExpired
from core.expiry import expire_all
from events import selectors
from events.models import Event, Seat, SeatHoldGroup
from events.services import events, rules, seat_holds
from tests.events.factories import make_event, overdue_hold, violations, write_hold
from tests.factories import UserFactory, house, house_operator

pytestmark = pytest.mark.django_db


def test_twenty_thousand_seats_are_one_insert():
    with CaptureQueriesContext(connection) as queries:
        event = make_event(layout=(("A", "B", "C", "D"), 50, 100))

    inserts = [q for q in queries.captured_queries if q["sql"].replace('"', "").startswith("INSERT INTO events_seat ")]
    assert len(inserts) == 1
    assert Seat.objects.filter(event=event).count() == event.total_seats == 20_000
    assert Seat.objects.filter(event=event, code="D-50-100", section="D", row=50, number=100).exists()


def test_a_layout_that_disagrees_with_the_total_is_refused():
    with pytest.raises(errors.ValidationFailed):
        events.event_create(
            name="x",
            event_date=timezone.now(),
            location="x",
            total_seats=5,
            layout=events.SeatLayout(("A",), 2, 2),
            now=timezone.now(),
            organisation_id=house().pk,
        )


def test_closing_and_opening_sales_is_audited():
    event, operator = make_event(), house_operator()

    events.event_sales_set(event_id=event.pk, sales_open=False, actor=operator, now=timezone.now())
    events.event_sales_set(event_id=event.pk, sales_open=False, actor=operator, now=timezone.now())
    events.event_sales_set(event_id=event.pk, sales_open=True, actor=operator, now=timezone.now())

    assert [(e.event_type, e.to_state) for e in trail(event)] == [
        ("CREATED", "OPEN"),
        ("SALES_CLOSED", "CLOSED"),
        ("SALES_OPENED", "OPEN"),
    ]


def test_expiry_job_flips_overdue_groups_with_one_event_each():
    event = make_event()
    overdue = [overdue_hold(event, [f"S{i}", f"S{i + 1}"]) for i in (1, 3, 5)]
    live = write_hold(event, ["S9"])

    assert seat_holds.seat_holds_expire_due(now=timezone.now(), batch_size=2) == 3
    assert seat_holds.seat_holds_expire_due(now=timezone.now()) == 0

    for group in overdue:
        group.refresh_from_db()
        assert group.state == "EXPIRED"
        assert set(group.claims.values_list("state", flat=True)) == {"EXPIRED"}
        assert trail(rules.hold_subject(group)).filter(event_type="EXPIRED").count() == 1
    live.refresh_from_db()
    assert live.state == "HELD"
    assert violations(event) == []


def test_the_shared_expiry_job_and_command_cover_events(capsys):
    event = make_event()
    overdue_hold(event, ["S1"])

    assert expire_all(now=timezone.now())["events"] == 1
    overdue_hold(event, ["S2"])
    call_command("expire_holds")
    assert "events: expired 1" in capsys.readouterr().out


def test_overdue_holds_count_as_available_before_the_job_runs():
    event = make_event(total_seats=4)
    overdue_hold(event, ["S1", "S2"])
    write_hold(event, ["S3"])

    counted = selectors.event_with_counts(event_id=event.pk, now=timezone.now())

    assert (counted.confirmed_seats, counted.held_seats, counted.available_seats) == (0, 1, 3)


def test_confirm_at_the_expiry_instant_is_expired():
    event, user = make_event(), UserFactory()
    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1"], now=timezone.now())

    with pytest.raises(HoldExpired):
        seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=user, now=group.expires_at)


def test_operator_expires_a_hold_now():
    event, user, operator = make_event(), UserFactory(), house_operator()
    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1"], now=timezone.now())

    seat_holds.seat_hold_expire(hold_group_id=group.pk, user=operator, now=timezone.now())

    group.refresh_from_db()
    assert group.state == "EXPIRED"
    assert AuditEvent.objects.filter(subject_id=str(group.pk), event_type="EXPIRED", actor=operator).exists()


def test_best_available_skips_overdue_blockers_and_expires_them():
    event, user = make_event(layout=(("A",), 1, 3)), UserFactory()
    overdue = overdue_hold(event, ["A-1-1", "A-1-2", "A-1-3"])

    group = seat_holds.seat_hold(event_id=event.pk, user=user, quantity=3, now=timezone.now())

    assert sorted(s.code for s in group.seats) == ["A-1-1", "A-1-2", "A-1-3"]
    overdue.refresh_from_db()
    assert overdue.state == "EXPIRED"


def test_cancel_moves_the_counter_back():
    event, user = make_event(), UserFactory()
    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1", "S2"], now=timezone.now())
    group = seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=user, now=timezone.now())
    event.refresh_from_db()
    assert event.confirmed_seats == 2

    seat_holds.seat_booking_cancel(booking_group_id=group.booking_group_id, user=user, now=timezone.now())

    event.refresh_from_db()
    assert event.confirmed_seats == 0
    assert SeatHoldGroup.objects.get(pk=group.pk).state == "CANCELLED"
    assert violations(event) == []


def test_hold_expiry_is_the_events_hold_minutes():
    event, user = make_event(hold_minutes=1), UserFactory()
    now = timezone.now()

    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1"], now=now)

    # From when the hold was granted: ``locked_now``, once the seat locks were held, not before.
    assert group.expires_at == group.created_at + timedelta(minutes=1)
    assert now <= group.created_at <= timezone.now()


def test_update_details_writes_only_what_changed_and_audits_it():
    event, user, operator = make_event(), UserFactory(), house_operator()
    stale = Event.objects.get(pk=event.pk)  # read before the confirm below
    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1", "S2"], now=timezone.now())
    seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=user, now=timezone.now())

    updated = events.event_update_details(
        event_id=stale.pk, actor=operator, now=timezone.now(), name="Renamed", location=stale.location
    )

    event.refresh_from_db()
    assert (event.name, event.location, event.confirmed_seats) == ("Renamed", "Mumbai", 2)
    assert updated.confirmed_seats == 2
    [audited] = trail(event).filter(event_type="UPDATED")
    assert audited.actor_id == operator.pk
    assert audited.metadata == {"fields": ["name"], "from": {"name": "Coldplay Concert"}, "to": {"name": "Renamed"}}
    assert violations(event) == []


def test_update_details_with_nothing_new_writes_nothing():
    event = make_event()

    events.event_update_details(
        event_id=event.pk, actor=None, now=timezone.now(), name=event.name, hold_minutes=event.hold_minutes
    )

    assert not trail(event).filter(event_type="UPDATED").exists()
    assert Event.objects.get(pk=event.pk).updated_at == event.updated_at


@pytest.mark.parametrize(
    "change",
    [
        {"event_date": timezone.now() - timedelta(days=1)},
        {"event_date": timezone.now() + timedelta(days=11 * 365)},
        {"hold_minutes": 0},
        {"hold_minutes": 61},
    ],
)
def test_update_details_refuses_a_bad_date_or_hold_length(change):
    event = make_event()

    with pytest.raises(errors.ValidationFailed):
        events.event_update_details(event_id=event.pk, actor=None, now=timezone.now(), **change)

    assert not trail(event).filter(event_type="UPDATED").exists()


def test_update_details_of_a_missing_event_is_not_found():
    with pytest.raises(errors.NotFound):
        events.event_update_details(event_id=999_999_999, actor=None, now=timezone.now(), name="x")


@pytest.mark.parametrize("event_date", [timezone.now() - timedelta(minutes=1), timezone.now() + timedelta(days=3660)])
def test_an_event_is_created_in_the_next_ten_years(event_date):
    with pytest.raises(errors.ValidationFailed):
        events.event_create(
            name="x", event_date=event_date, location="x", total_seats=1, now=timezone.now(), organisation_id=house().pk
        )


@pytest.mark.parametrize("who", ["owner", "someone_else"])
def test_only_an_operator_expires_a_hold_now(who):
    event, owner = make_event(), UserFactory()
    group = seat_holds.seat_hold(event_id=event.pk, user=owner, seat_codes=["S1"], now=timezone.now())
    user = owner if who == "owner" else UserFactory()

    with pytest.raises(Forbidden):
        seat_holds.seat_hold_expire(hold_group_id=group.pk, user=user, now=timezone.now())

    group.refresh_from_db()
    assert group.state == "HELD"
    assert not trail(rules.hold_subject(group)).filter(event_type="EXPIRED").exists()


def test_a_confirm_is_audited_with_its_booking_id():
    event, user = make_event(), UserFactory()
    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1"], now=timezone.now())

    confirmed = seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=user, now=timezone.now())

    [audited] = trail(rules.hold_subject(group)).filter(event_type="CONFIRMED")
    assert audited.metadata == {"eventId": event.pk, "bookingGroupId": str(confirmed.booking_group_id)}
    assert SeatHoldGroup.objects.get(pk=group.pk).booking_group_id == confirmed.booking_group_id


@pytest.mark.parametrize("microsecond", [0, 1, 999, 123456])
def test_the_created_events_expiry_reads_as_django_writes_it(microsecond):
    """The hold's statement writes its CREATED event's ``expiresAt`` itself (the hold's length is the
    event's, read under its lock): the same text DjangoJSONEncoder writes for the other domains' events."""
    event, user = make_event(), UserFactory()
    now = (timezone.now() + timedelta(seconds=2)).replace(microsecond=microsecond)  # after the clock: judged by it

    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1"], now=now)

    [created] = trail(rules.hold_subject(group))
    assert created.metadata["expiresAt"] == json.loads(json.dumps(group.expires_at, cls=DjangoJSONEncoder))
    assert group.expires_at == now + timedelta(minutes=event.hold_minutes)
