from datetime import timedelta

import pytest
from django.contrib import admin
from django.test import Client
from django.utils import timezone

from core.audit.models import AuditEvent
from events import queue
from events.admin import EventAdmin
from events.models import Event, Seat, SeatHoldGroup, WaitlistEntry
from events.services import events, seat_holds, waitlist
from tests.events.factories import make_event, violations, write_hold
from tests.factories import UserFactory, house

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def add_event(admin_client, **layout):
    form = {
        "name": "Gala",
        "event_date_0": "2031-05-01",
        "event_date_1": "19:30:00",
        "location": "Pune",
        "organisation": str(house().pk),
        "hold_minutes": "5",
        "sales_open": "on",
        **layout,
    }
    return admin_client.post("/admin/events/event/add/", form)


def test_the_add_page_offers_both_layouts(admin_client):
    page = admin_client.get("/admin/events/event/add/").content.decode()

    assert 'name="layout"' in page and 'name="sections"' in page and 'name="total_seats"' in page


def test_create_an_event_with_a_sections_layout(admin_client, staff):
    response = add_event(admin_client, layout="sections", sections="A, B", rows="3", seats_per_row="12")

    assert response.status_code == 302, response.content.decode()[:2000]
    event = Event.objects.get(name="Gala")
    assert event.total_seats == Seat.objects.filter(event=event).count() == 72
    assert Seat.objects.filter(event=event, code="A-3-12").exists()
    assert AuditEvent.objects.get(subject_type="event", subject_id=str(event.pk)).actor_id == staff.pk


def test_create_a_plain_event(admin_client):
    response = add_event(admin_client, layout="plain", total_seats="40")

    assert response.status_code == 302
    event = Event.objects.get(name="Gala")
    assert Seat.objects.filter(event=event).count() == 40 and Seat.objects.filter(event=event, code="S40").exists()


@pytest.mark.parametrize(
    "layout",
    [
        {"layout": "plain"},
        {"layout": "sections", "sections": "A", "rows": "2"},
        {"layout": "sections", "sections": "A-1", "rows": "1", "seats_per_row": "1"},
    ],
)
def test_an_incomplete_layout_is_refused_on_the_form(admin_client, layout):
    response = add_event(admin_client, **layout)

    assert response.status_code == 200
    assert not Event.objects.exists()


def test_the_event_page_shows_the_seat_map_and_counts(admin_client):
    event = make_event(layout=(("A", "B"), 2, 5))
    write_hold(event, ["A-1-1", "A-1-2"], state="CONFIRMED")
    write_hold(event, ["B-2-5"])

    page = admin_client.get(f"/admin/events/event/{event.pk}/change/").content.decode()

    assert 'class="seat-map"' in page
    assert page.count('class="seat BOOKED"') == 2
    assert page.count('class="seat HELD"') == 1
    assert page.count('class="seat AVAILABLE"') == 17
    assert "booked 2" in page and "held 1" in page and "available 17" in page
    assert 'title="B-2-5 HELD"' in page


def test_the_event_list_shows_counts(admin_client):
    make_event()

    assert admin_client.get("/admin/events/event/").status_code == 200


def test_close_sales_from_the_list(admin_client):
    event = make_event()

    admin_client.post("/admin/events/event/", {"action": "close_sales", "_selected_action": [event.pk]})

    event.refresh_from_db()
    assert event.sales_open is False
    assert AuditEvent.objects.filter(subject_id=str(event.pk), event_type="SALES_CLOSED").exists()


def test_find_a_booking_and_cancel_it(admin_client, user):
    event = make_event()
    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1", "S2"], now=_now())
    group = seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=user, now=_now())

    found = admin_client.get(f"/admin/events/seatholdgroup/?q={group.booking_group_id}").content.decode()
    detail = admin_client.get(f"/admin/events/seatholdgroup/{group.pk}/change/").content.decode()
    admin_client.post(
        "/admin/events/seatholdgroup/", {"action": "cancel_bookings", "_selected_action": [str(group.pk)]}
    )

    assert str(group.pk) in found and "1 hold group" not in found
    assert "S1, S2" in detail and "CONFIRMED" in detail
    group.refresh_from_db()
    assert group.state == "CANCELLED"
    event.refresh_from_db()
    assert event.confirmed_seats == 0


def test_expire_a_hold_from_the_list(admin_client, user):
    event = make_event()
    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1"], now=_now())

    admin_client.post("/admin/events/seatholdgroup/", {"action": "expire_now", "_selected_action": [str(group.pk)]})

    assert SeatHoldGroup.objects.get(pk=group.pk).state == "EXPIRED"


def change_event(admin_client, event, **fields):
    local = timezone.localtime(event.event_date)
    form = {
        "name": event.name,
        "event_date_0": local.strftime("%Y-%m-%d"),
        "event_date_1": local.strftime("%H:%M:%S"),
        "location": event.location,
        "hold_minutes": str(event.hold_minutes),
        "admitted_per_minute": str(event.admitted_per_minute),
        "admission_window_minutes": str(event.admission_window_minutes),
        **({"queue_enabled": "on"} if event.queue_enabled else {}),
        **fields,
    }
    return admin_client.post(f"/admin/events/event/{event.pk}/change/", form)


def test_an_edit_goes_through_the_service_and_is_audited(admin_client, staff):
    event = make_event()

    response = change_event(admin_client, event, name="Renamed", location="Pune", hold_minutes="7")

    assert response.status_code == 302, response.content.decode()[:2000]
    event.refresh_from_db()
    assert (event.name, event.location, event.hold_minutes) == ("Renamed", "Pune", 7)
    updated = AuditEvent.objects.get(subject_type="event", subject_id=str(event.pk), event_type="UPDATED")
    assert updated.actor_id == staff.pk
    assert updated.metadata["fields"] == ["name", "location", "hold_minutes"]
    assert updated.metadata["from"]["name"] == "Coldplay Concert" and updated.metadata["to"]["name"] == "Renamed"


def test_an_edit_that_changes_nothing_writes_nothing(admin_client):
    event = make_event()

    assert change_event(admin_client, event).status_code == 302

    assert not AuditEvent.objects.filter(subject_id=str(event.pk), event_type="UPDATED").exists()
    assert Event.objects.get(pk=event.pk).updated_at == event.updated_at


def test_an_edit_never_writes_back_the_counter_or_sales_it_read(admin_client, user, monkeypatch):
    """The admin read the event (0 booked, sales open) before a confirm and a sales close committed;
    saving the form must keep both (a full ``obj.save()`` wrote the stale values back)."""
    event = make_event()
    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1", "S2"], now=_now())
    real_save_model = EventAdmin.save_model

    def others_commit_first(self, request, obj, form, change):
        seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=user, now=_now())
        events.event_sales_set(event_id=event.pk, sales_open=False, actor=None, now=_now())
        return real_save_model(self, request, obj, form, change)

    monkeypatch.setattr(EventAdmin, "save_model", others_commit_first)

    assert change_event(admin_client, event, name="Renamed").status_code == 302

    event.refresh_from_db()
    assert (event.name, event.confirmed_seats, event.sales_open) == ("Renamed", 2, False)
    assert violations(event) == []


def test_an_operator_puts_an_event_behind_its_queue_in_the_admin(admin_client, staff):
    event = make_event()

    response = change_event(admin_client, event, queue_enabled="on", admitted_per_minute="120")

    assert response.status_code == 302, response.content.decode()[:2000]
    event.refresh_from_db()
    assert (event.queue_enabled, event.admitted_per_minute) == (True, 120)
    updated = AuditEvent.objects.get(subject_type="event", subject_id=str(event.pk), event_type="UPDATED")
    assert (updated.metadata["fields"], updated.actor_id) == (["queue_enabled", "admitted_per_minute"], staff.pk)


def test_the_admin_refuses_a_rate_out_of_range(admin_client):
    event = make_event()

    response = change_event(admin_client, event, admitted_per_minute="0")

    assert response.status_code == 200
    assert Event.objects.get(pk=event.pk).admitted_per_minute == 60


def test_operators_watch_the_queue_in_join_order(admin_client, user):
    event = events.event_update_details(event_id=make_event().pk, actor=None, now=_now(), queue_enabled=True)
    entries = [queue.queue_join(event_id=event.pk, user=UserFactory(), now=_now())[0] for _ in range(3)]
    queue.queue_admit(event_id=event.pk, now=_now() + timedelta(seconds=1))

    page = admin_client.get(f"/admin/events/event/{event.pk}/change/").content.decode()
    listing = admin_client.get(f"/admin/events/queueentry/?event__id__exact={event.pk}").content.decode()
    detail = admin_client.get(f"/admin/events/queueentry/{entries[2].pk}/change/").content.decode()

    assert "3 joined, 1 admitted, 2 waiting" in page
    assert "ADMITTED" in listing and str(entries[1].user) in listing
    assert "WAITING" in detail and "CREATED" in detail  # its state and its audit trail
    assert admin_client.post(f"/admin/events/queueentry/{entries[0].pk}/delete/", {"post": "yes"}).status_code == 403


def test_events_cannot_be_deleted(admin_client):
    event = make_event()

    changelist = admin_client.get("/admin/events/event/").content.decode()
    response = admin_client.post(f"/admin/events/event/{event.pk}/delete/", {"post": "yes"})

    assert EventAdmin(Event, admin.site).has_delete_permission(None, event) is False
    assert 'value="delete_selected"' not in changelist
    assert response.status_code == 403
    assert Event.objects.filter(pk=event.pk).exists() and Seat.objects.filter(event=event).count() == 10


@pytest.mark.parametrize(
    ("zone", "day", "time"),
    [
        ("Europe/Berlin", "9999-12-31", "23:30:00"),
        ("America/New_York", "9999-12-31", "23:00:00"),  # past year 9999 in UTC
        ("Europe/Berlin", "2001-01-01", "19:30:00"),  # in the past
        ("Europe/Berlin", "+11y", "19:30:00"),
    ],
)
def test_an_event_date_in_the_past_or_far_ahead_is_refused_on_the_add_form(admin_client, settings, zone, day, time):
    settings.TIME_ZONE = zone
    if day == "+11y":
        day = (timezone.now() + timedelta(days=11 * 365)).date().isoformat()
    with timezone.override(zone):
        response = add_event(admin_client, event_date_0=day, event_date_1=time, layout="plain", total_seats="5")

    assert response.status_code == 200
    assert "event_date" in response.context["adminform"].form.errors
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"event_date_0": "9999-12-31", "event_date_1": "23:30:00"},
        {"event_date_0": "2001-01-01", "event_date_1": "19:30:00"},
        {"hold_minutes": "0"},
        {"hold_minutes": "70000"},
    ],
)
def test_a_bad_date_or_hold_length_is_refused_on_the_change_form(admin_client, fields):
    event = make_event()

    response = change_event(admin_client, event, **fields)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert Event.objects.get(pk=event.pk).event_date == event.event_date
    assert not AuditEvent.objects.filter(subject_id=str(event.pk), event_type="UPDATED").exists()


def test_an_event_already_past_can_still_be_renamed(admin_client):
    event = make_event(event_date=timezone.now() - timedelta(days=2))

    assert change_event(admin_client, event, name="Last year's gala").status_code == 302

    assert Event.objects.get(pk=event.pk).name == "Last year's gala"


def _now():
    return timezone.now()


# --- the waiting list ------------------------------------------------------------------------------


def waiting_event(n: int = 2):
    event = make_event(total_seats=2)
    write_hold(event, ["S1", "S2"])
    users = [UserFactory() for _ in range(n)]
    return event, [waitlist.waitlist_join(event_id=event.pk, user=u, quantity=1, now=timezone.now()) for u in users]


def test_the_waiting_list_shows_positions_states_and_users(admin_client):
    event, (first, second) = waiting_event()

    page = admin_client.get(f"/admin/events/waitlistentry/?event__id__exact={event.pk}").content.decode()

    assert str(first.user) in page and str(second.user) in page
    assert '<td class="field-position">1</td>' in page and '<td class="field-position">2</td>' in page
    assert "WAITING" in page
    assert admin_client.get(f"/admin/events/waitlistentry/{first.pk}/change/").status_code == 200


def test_the_event_page_shows_how_many_wait_and_links_to_the_list(admin_client):
    event, _ = waiting_event()

    page = admin_client.get(f"/admin/events/event/{event.pk}/change/").content.decode()

    assert f"/admin/events/waitlistentry/?event__id__exact={event.pk}" in page and "2 waiting" in page


def test_removing_an_entry_asks_first_then_goes_through_the_service(admin_client, staff):
    event, (first, _second) = waiting_event()
    form = {"action": "remove_entries", "_selected_action": [str(first.pk)]}

    asked = admin_client.post("/admin/events/waitlistentry/", form)

    assert asked.status_code == 200 and "Yes, remove them" in asked.content.decode()
    assert WaitlistEntry.objects.get(pk=first.pk).state == "WAITING"

    done = admin_client.post("/admin/events/waitlistentry/", {**form, "confirmed": "yes"})

    assert done.status_code == 302
    assert WaitlistEntry.objects.get(pk=first.pk).state == "LEFT"
    left = AuditEvent.objects.get(subject_type="waitlist_entry", subject_id=str(first.pk), event_type="LEFT")
    assert left.actor_id == staff.pk
    assert Event.objects.get(pk=event.pk).waiting_count == 1


def test_turn_the_waiting_list_off_from_the_event_list(admin_client):
    event = make_event()

    admin_client.post("/admin/events/event/", {"action": "turn_waitlist_off", "_selected_action": [str(event.pk)]})

    assert not Event.objects.get(pk=event.pk).waitlist_enabled
