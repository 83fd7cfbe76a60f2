import html
import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from core.audit.models import AuditEvent
from slots.forms import BulkSlotForm
from slots.models import Availability, Slot, SlotBooking
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(staff):
    client = Client()
    client.force_login(staff)
    return client


def next_monday() -> date:
    today = timezone.localdate()
    return today + timedelta(days=7 - today.weekday())


def bulk(admin_client, host, **overrides):
    data = {
        "host": host.pk,
        "title": "Consultation",
        "specialization": "cardiology",
        "capacity": 2,
        "first_day": next_monday().isoformat(),
        "weeks": 4,
        "weekdays": ["0", "1", "2", "3", "4"],
        "day_start": "09:00",
        "day_end": "12:00",
        "minutes": 30,
        **overrides,
    }
    return admin_client.post("/admin/slots/slot/bulk-add/", data)


def test_the_pages_load(admin_client):
    booking = SlotBookingFactory()

    for url in [
        "/admin/slots/slot/",
        "/admin/slots/slot/add/",
        f"/admin/slots/slot/{booking.slot_id}/change/",
        "/admin/slots/slot/bulk-add/",
        "/admin/slots/slotbooking/",
        f"/admin/slots/slotbooking/{booking.pk}/change/",
        "/admin/slots/slotbooking/analytics/",
    ]:
        assert admin_client.get(url).status_code == 200, url


def test_an_operator_adds_a_slot_for_a_host(admin_client, staff):
    host = HostFactory()
    day = (timezone.localdate() + timedelta(days=3)).isoformat()
    data = {"host": host.pk, "title": "Visit", "specialization": "", "capacity": 2}
    data |= {"start_0": day, "start_1": "10:00", "end_0": day, "end_1": "10:30"}

    response = admin_client.post("/admin/slots/slot/add/", data)

    assert response.status_code == 302
    slot = Slot.objects.get(host=host)
    assert (slot.title, slot.capacity, timezone.localtime(slot.start).hour) == ("Visit", 2, 10)
    assert AuditEvent.objects.filter(subject_type="slot", subject_id=str(slot.pk), actor=staff).exists()

    again = admin_client.post("/admin/slots/slot/add/", data)
    assert again.status_code == 200
    assert "overlapping" in again.content.decode()
    assert Slot.objects.filter(host=host).count() == 1


def test_bulk_creation_makes_every_weekday_morning_for_four_weeks(admin_client):
    host = HostFactory()

    response = bulk(admin_client, host)

    assert response.status_code == 302
    slots = list(Slot.objects.filter(host=host).order_by("start"))
    assert len(slots) == 4 * 5 * 6
    assert {timezone.localtime(s.start).weekday() for s in slots} == {0, 1, 2, 3, 4}
    assert {timezone.localtime(s.start).strftime("%H:%M") for s in slots} == {
        "09:00",
        "09:30",
        "10:00",
        "10:30",
        "11:00",
        "11:30",
    }
    assert all(s.capacity == 2 and s.end - s.start == timedelta(minutes=30) for s in slots)


def test_bulk_creation_refuses_an_overlap_with_a_clear_message_and_creates_nothing(admin_client):
    host = HostFactory()
    first_day = next_monday() + timedelta(days=7)
    clash_start = timezone.make_aware(datetime.combine(first_day, time(10, 15)))
    existing = SlotFactory(host=host, start=clash_start, end=clash_start + timedelta(minutes=30))

    response = bulk(admin_client, host)

    assert response.status_code == 200
    content = response.content.decode()
    assert "No slots were created" in content and f"#{existing.pk}" in content
    assert list(Slot.objects.filter(host=host)) == [existing]


def test_bulk_form_refuses_an_inverted_day(admin_client):
    response = bulk(admin_client, HostFactory(), day_start="12:00", day_end="09:00")

    assert response.status_code == 200
    assert "The day must end after it starts." in response.content.decode()


def test_editing_a_slot_changes_only_its_name_and_is_audited(admin_client):
    slot = SlotFactory(title="Old")

    response = admin_client.post(
        f"/admin/slots/slot/{slot.pk}/change/", {"title": "New", "specialization": "neurology"}
    )

    assert response.status_code == 302
    slot.refresh_from_db()
    assert (slot.title, slot.specialization) == ("New", "neurology")
    assert AuditEvent.objects.filter(subject_type="slot", subject_id=str(slot.pk), event_type="UPDATED").exists()


def test_the_withdraw_action_spares_booked_slots(admin_client):
    free, booked = SlotFactory(), SlotFactory()
    SlotBookingFactory(slot=booked)

    response = admin_client.post(
        "/admin/slots/slot/", {"action": "cancel_slots", "_selected_action": [free.pk, booked.pk]}, follow=True
    )

    assert "1 slot withdrawn" in response.content.decode()
    assert Slot.objects.get(pk=free.pk).status == "CANCELLED"
    assert Slot.objects.get(pk=booked.pk).status == "AVAILABLE"


def test_operators_cancel_and_expire_bookings_through_actions(admin_client):
    soon = timezone.now() + timedelta(minutes=20)
    slot = SlotFactory(capacity=2, start=soon, end=soon + timedelta(hours=1))
    confirmed = SlotBookingFactory(slot=slot)
    pending = SlotBookingFactory(slot=slot, status="PENDING")

    admin_client.post("/admin/slots/slotbooking/", {"action": "cancel", "_selected_action": [confirmed.pk]})
    admin_client.post("/admin/slots/slotbooking/", {"action": "expire_now", "_selected_action": [pending.pk]})

    assert SlotBooking.objects.get(pk=confirmed.pk).status == "CANCELLED"
    assert SlotBooking.objects.get(pk=pending.pk).status == "EXPIRED"
    slot.refresh_from_db()
    assert slot.booked == 0


def test_the_analytics_page_draws_bookings_per_day(admin_client):
    for _ in range(3):
        SlotBookingFactory()
    today = timezone.localdate().isoformat()

    response = admin_client.get("/admin/slots/slotbooking/analytics/", {"start_date": today, "end_date": today})

    content = response.content.decode()
    day = timezone.localdate()
    assert "<svg" in content and f"<title>{day:%a} {day.day} {day:%b}: 3</title>" in content  # "Tue 1 Dec: 3"
    assert '<td id="total-bookings">3</td>' in content


def test_the_analytics_page_says_what_it_counts(admin_client):
    content = " ".join(admin_client.get("/admin/slots/slotbooking/analytics/").content.decode().split())

    assert "slot bookings by the day they were made</strong> (not the day of the slot)" in content
    assert "A booking moved to another slot counts once" in content


def test_the_analytics_total_is_the_count_of_the_list_it_links_to(admin_client):
    SlotBookingFactory(status=SlotBooking.Status.CANCELLED)
    moved_away = SlotBookingFactory(status=SlotBooking.Status.CANCELLED)
    SlotBookingFactory(rescheduled_from=moved_away)  # counted once, as this row
    SlotBookingFactory(created_at=timezone.now() - timedelta(days=40))  # before the range
    today = timezone.localdate()

    page = admin_client.get(
        "/admin/slots/slotbooking/analytics/", {"start_date": today - timedelta(days=29), "end_date": today}
    ).content.decode()
    listing = admin_client.get(html.unescape(re.search(r'id="in-the-list" href="([^"]+)"', page)[1]))

    assert '<td id="total-bookings">2</td>' in page
    assert listing.status_code == 200
    assert "2 slot bookings" in listing.content.decode()


def test_the_analytics_page_survives_an_empty_or_bad_range(admin_client):
    url = "/admin/slots/slotbooking/analytics/"
    ok = admin_client.get(url, {"start_date": "2020-01-01", "end_date": "2020-01-03"})
    bad = admin_client.get(url, {"start_date": "2020-01-03", "end_date": "2020-01-01"})

    assert ok.status_code == 200 and "No bookings in this range." in ok.content.decode()
    assert bad.status_code == 200 and "must not be before" in bad.content.decode()


def test_the_analytics_page_refuses_days_at_the_end_of_the_calendar(admin_client):
    response = admin_client.get(
        "/admin/slots/slotbooking/analytics/", {"start_date": "9999-01-01", "end_date": "9999-12-31"}
    )

    assert response.status_code == 200
    assert "Must be between 1900-01-01 and 9000-12-31." in response.content.decode()


def test_the_bulk_form_is_an_admin_form_with_a_help_text_for_every_field(admin_client):
    response = admin_client.get("/admin/slots/slot/bulk-add/")
    page = html.unescape(response.content.decode())

    assert "admin/css/forms.css" in page and page.count('<fieldset class="module aligned') == 2
    for field in BulkSlotForm(request=response.wsgi_request).visible_fields():
        assert field.help_text and field.help_text in page, field.name
    assert 'value="09:00"' in page and 'value="12:00"' in page  # HH:MM, as the help texts say
    assert "HH:MM on the clock in UTC" in page


def test_bulk_creation_refuses_a_first_day_more_than_five_years_ahead(admin_client):
    host = HostFactory()

    response = bulk(admin_client, host, first_day="9999-12-25", weeks=52, weekdays=["0", "1"])

    assert response.status_code == 200
    assert "Slots can be added at most five years ahead" in response.content.decode()
    assert not Slot.objects.filter(host=host).exists()


def test_bulk_creation_refuses_weeks_that_run_past_five_years(admin_client):
    host = HostFactory()
    first_day = timezone.localdate() + timedelta(days=5 * 365 - 7)

    response = bulk(admin_client, host, first_day=first_day.isoformat(), weeks=4)

    assert response.status_code == 200
    assert "No slots were created. endTime: A slot must end within five years" in response.content.decode()
    assert not Slot.objects.filter(host=host).exists()


def test_bulk_creation_refuses_a_first_day_in_the_past(admin_client):
    response = bulk(admin_client, HostFactory(), first_day="0001-01-01")

    assert response.status_code == 200
    assert "Must not be in the past." in response.content.decode()


def add_slot(admin_client, host, *, day: str, start: str = "10:00", end: str = "11:00", capacity="1"):
    data = {"host": host.pk, "title": "Visit", "specialization": "", "capacity": capacity}
    data |= {"start_0": day, "start_1": start, "end_0": day, "end_1": end}
    return admin_client.post("/admin/slots/slot/add/", data)


def test_adding_a_slot_with_a_huge_capacity_is_a_form_error(admin_client):
    host = HostFactory()
    day = (timezone.localdate() + timedelta(days=3)).isoformat()

    response = add_slot(admin_client, host, day=day, capacity="99999999999")

    assert response.status_code == 200
    assert "Ensure this value is less than or equal to 10000." in response.content.decode()
    assert not Slot.objects.filter(host=host).exists()


def test_adding_a_slot_more_than_five_years_ahead_is_a_form_error(admin_client):
    host = HostFactory()

    response = add_slot(admin_client, host, day="9999-12-31", start="23:00", end="23:59")

    assert response.status_code == 200
    assert "A slot must end within five years" in response.content.decode()
    assert not Slot.objects.filter(host=host).exists()


# --- availability --------------------------------------------------------------------------------


def hours_rows(name: str, rows: list[tuple[str, list[tuple[str, str]]]], room: int = 2) -> dict:
    """The POST of an HoursWidget: each row its key (a date, or nothing for a weekday) and its windows."""
    data = {}
    for index, (key, windows) in enumerate(rows):
        if key:
            data[f"{name}-{index}-date"] = key
        for column in range(room):
            start, end = windows[column] if column < len(windows) else ("", "")
            data |= {f"{name}-{index}-{column}-start": start, f"{name}-{index}-{column}-end": end}
    return data


NINE_TO_FIVE = [("", [("09:00", "17:00")])] * 5 + [("", [])] * 2


def availability_form(host=None, weekly=NINE_TO_FIVE, overrides=(("", []),), **fields) -> dict:
    data = {
        "time_zone": "Europe/Berlin",
        **hours_rows("weekly", weekly),
        **hours_rows("overrides", list(overrides)),
        "durations": "30",
        "minimum_notice_minutes": 0,
        "buffer_minutes": 0,
        **fields,
    }
    return {**data, "host": host.pk} if host is not None else data


def test_an_operator_sets_any_hosts_hours_through_the_service(admin_client, staff):
    host = HostFactory()

    response = admin_client.post("/admin/slots/availability/add/", availability_form(host))

    assert response.status_code == 302, response.content.decode()[:2000]
    availability = Availability.objects.get(host=host)
    assert (availability.time_zone, len(availability.weekly)) == ("Europe/Berlin", 5)
    [created] = AuditEvent.objects.filter(subject_type="availability", subject_id=str(host.pk))
    assert created.actor_id == staff.pk


def test_the_form_writes_the_apis_shape_rows_per_day_dates_and_lengths(admin_client):
    host = HostFactory()
    weekly = [("", [("13:30", "17:00"), ("09:00", "12:30")]), *NINE_TO_FIVE[1:]]
    overrides = [("2031-12-24", []), ("2031-12-31", [("10:00", "12:00")]), ("", [])]

    response = admin_client.post(
        "/admin/slots/availability/add/",
        availability_form(host, weekly=weekly, overrides=overrides, durations="60, 30"),
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    availability = Availability.objects.get(host=host)
    assert availability.weekly[:3] == [
        {"weekday": 0, "start": "09:00", "end": "12:30"},
        {"weekday": 0, "start": "13:30", "end": "17:00"},
        {"weekday": 1, "start": "09:00", "end": "17:00"},
    ]
    assert availability.overrides == [
        {"date": "2031-12-24", "windows": []},
        {"date": "2031-12-31", "windows": [{"start": "10:00", "end": "12:00"}]},
    ]
    assert availability.durations == [30, 60]
    page = admin_client.get(f"/admin/slots/availability/{host.pk}/change/").content.decode()
    assert 'name="weekly-0-1-start" value="13:30"' in page and 'name="weekly-0-2-start" value=""' in page
    assert 'name="overrides-1-date" value="2031-12-31"' in page and 'name="overrides-2-date" value=""' in page
    assert 'name="durations" value="30, 60"' in page


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        (
            {"weekly": [("", [("12:00", "09:00")]), *NINE_TO_FIVE[1:]]},
            "weekly",
            "Monday 12:00 to 09:00: Must be after start (12:00).",
        ),
        ({"weekly": [("", [("9", "")]), *NINE_TO_FIVE[1:]]}, "weekly", "Monday 9 to ?: Must be a wall-clock time"),
        (
            {"weekly": [("", [("09:00", "12:00"), ("11:00", "13:00")])]},
            "weekly",
            "Monday 11:00 to 13:00: Overlaps the window",
        ),
        (
            {"overrides": [("2031-12-31", [("13:00", "12:00")])]},
            "overrides",
            "2031-12-31 13:00 to 12:00: Must be after",
        ),
        ({"overrides": [("24.12.2031", [])]}, "overrides", "24.12.2031: Must be a date, YYYY-MM-DD."),
        ({"overrides": [("2031-12-24", []), ("2031-12-24", [])]}, "overrides", "2031-12-24 is overridden twice."),
        ({"durations": "30, half an hour"}, "durations", "half: Must be a whole number from 5 to 1440."),
        ({"durations": ""}, "durations", "Offer at least one appointment length."),
        ({"time_zone": "Mars/Olympus"}, "time_zone", "Unknown time zone"),
    ],
)
def test_bad_hours_show_at_their_field_in_the_apis_words(admin_client, fields, field, says):
    host = HostFactory()

    response = admin_client.post("/admin/slots/availability/add/", availability_form(host, **fields))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert any(says in problem for problem in errors[field]), errors
    assert not Availability.objects.exists()


def test_the_change_page_edits_the_hours_and_draws_the_hosts_week(admin_client):
    host = HostFactory()
    admin_client.post("/admin/slots/availability/add/", availability_form(host))
    monday = next_monday()
    zone = ZoneInfo("Europe/Berlin")
    slot = SlotFactory(
        host=host,
        start=datetime.combine(monday, time(10), tzinfo=zone),
        end=datetime.combine(monday, time(11), tzinfo=zone),
    )
    booking = SlotBookingFactory(slot=slot)
    elsewhere = SlotFactory(
        start=datetime.combine(monday, time(12), tzinfo=zone), end=datetime.combine(monday, time(12, 30), tzinfo=zone)
    )
    away = SlotBookingFactory(slot=elsewhere, guest=host)

    page = admin_client.get(f"/admin/slots/availability/{host.pk}/change/?week={monday}").content.decode()

    assert "hours 09:00 to 17:00" in page
    assert f"slot #{slot.pk} 10:00 to 11:00" in page and f"booking #{booking.pk} 10:00 to 11:00" in page
    assert f"away: booking #{away.pk} 12:00 to 12:30" in page
    response = admin_client.post(f"/admin/slots/availability/{host.pk}/change/", availability_form(buffer_minutes=15))
    assert response.status_code == 302
    assert Availability.objects.get(host=host).buffer_minutes == 15
