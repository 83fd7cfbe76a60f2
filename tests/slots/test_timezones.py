from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils.dateparse import parse_datetime

from slots.models import Slot
from tests.slots.factories import HostFactory

pytestmark = pytest.mark.django_db


def test_a_slot_created_with_a_plus_0530_offset_is_stored_and_listed_as_the_same_instant(client_for):
    host = HostFactory()
    api = client_for(host)

    body = {"startTime": "2031-01-15T10:00:00+05:30", "endTime": "2031-01-15T10:30:00+05:30"}

    response = api.post("/api/slots", body)

    assert response.status_code == 201
    slot = Slot.objects.get(pk=response.json()["id"])
    assert slot.start == datetime(2031, 1, 15, 4, 30, tzinfo=UTC)
    listed = api.get("/api/slots", {"hostId": host.pk, "startDate": "2031-01-15T09:59:00+05:30"}).json()["results"]
    assert [s["id"] for s in listed] == [slot.pk]
    assert parse_datetime(listed[0]["startTime"]) == datetime(2031, 1, 15, 10, 0, tzinfo=ZoneInfo("Asia/Kolkata"))
    assert parse_datetime(listed[0]["endTime"]) - parse_datetime(listed[0]["startTime"]) == timedelta(minutes=30)
    assert api.get("/api/slots", {"hostId": host.pk, "startDate": "2031-01-15T10:01:00+05:30"}).json()["count"] == 0


def test_a_bulk_creation_across_the_dst_change_keeps_local_times(settings, staff):
    settings.TIME_ZONE = "Europe/Berlin"
    berlin = ZoneInfo("Europe/Berlin")
    host = HostFactory()
    client = Client()
    client.force_login(staff)
    first_day = date(2031, 3, 24)  # Monday; Berlin moves its clocks forward on Sunday 30 March 2031

    response = client.post(
        "/admin/slots/slot/bulk-add/",
        {
            "host": host.pk,
            "capacity": 1,
            "first_day": first_day.isoformat(),
            "weeks": 2,
            "weekdays": ["0", "1", "2", "3", "4"],
            "day_start": "09:00",
            "day_end": "12:00",
            "minutes": 30,
        },
    )

    assert response.status_code == 302
    slots = list(Slot.objects.filter(host=host).order_by("start"))
    assert len(slots) == 2 * 5 * 6
    local_starts = {s.start.astimezone(berlin).strftime("%H:%M") for s in slots}
    assert local_starts == {"09:00", "09:30", "10:00", "10:30", "11:00", "11:30"}
    first = [s for s in slots if s.start.astimezone(berlin).strftime("%H:%M") == "09:00"]
    assert first[0].start == datetime(2031, 3, 24, 8, 0, tzinfo=UTC)  # CET, UTC+1
    assert first[-1].start == datetime(2031, 4, 4, 7, 0, tzinfo=UTC)  # CEST, UTC+2
    assert all(s.end - s.start == timedelta(minutes=30) for s in slots)


def test_a_date_only_filter_means_that_day_in_the_operators_time_zone(settings, client_for):
    settings.TIME_ZONE = "Europe/Berlin"
    host = HostFactory()
    api = client_for(host)
    # 23:30 Berlin on 14 January is 22:30 UTC: it belongs to the 14th, not the 15th.
    api.post("/api/slots", {"startTime": "2031-01-14T23:30:00+01:00", "endTime": "2031-01-15T00:00:00+01:00"})

    on_14th = api.get("/api/slots", {"hostId": host.pk, "startDate": "2031-01-14", "endDate": "2031-01-14"}).json()
    on_15th = api.get("/api/slots", {"hostId": host.pk, "startDate": "2031-01-15", "endDate": "2031-01-15"}).json()

    assert (on_14th["count"], on_15th["count"]) == (1, 0)


def bulk_one_night(settings, staff, host, day: date, **overrides):
    settings.TIME_ZONE = "Europe/Berlin"
    client = Client()
    client.force_login(staff)
    data = {
        "host": host.pk,
        "capacity": 1,
        "first_day": day.isoformat(),
        "weeks": 1,
        "weekdays": [str(day.weekday())],
        "day_start": "01:00",
        "day_end": "04:00",
        "minutes": 30,
        **overrides,
    }
    return client.post("/admin/slots/slot/bulk-add/", data, follow=True)


def utc(day: int, month: int, hour: int, minute: int = 0, year: int = 2030) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_when_the_clocks_go_back_every_slot_lasts_its_length_and_the_repeated_hour_is_offered_once(settings, staff):
    """Berlin, Sunday 27 October 2030: 03:00 summer time becomes 02:00 again. The slot at 02:30 (the first
    02:30, summer time) used to end at 03:00 winter time, 90 minutes later."""
    host = HostFactory()

    response = bulk_one_night(settings, staff, host, date(2030, 10, 27))

    assert response.status_code == 200 and "6 slots created" in response.content.decode()
    slots = list(Slot.objects.filter(host=host).order_by("start"))
    assert [(s.start, s.end) for s in slots] == [
        (utc(26, 10, 23, 0), utc(26, 10, 23, 30)),  # 01:00 CEST
        (utc(26, 10, 23, 30), utc(27, 10, 0, 0)),  # 01:30 CEST
        (utc(27, 10, 0, 0), utc(27, 10, 0, 30)),  # 02:00 CEST (the first 02:00)
        (utc(27, 10, 0, 30), utc(27, 10, 1, 0)),  # 02:30 CEST
        (utc(27, 10, 2, 0), utc(27, 10, 2, 30)),  # 03:00 CET
        (utc(27, 10, 2, 30), utc(27, 10, 3, 0)),  # 03:30 CET
    ]
    assert all(s.end - s.start == timedelta(minutes=30) for s in slots)


def test_when_the_clocks_go_forward_the_missing_times_are_skipped_and_listed(settings, staff):
    """Berlin, Sunday 31 March 2030: 02:00 winter time becomes 03:00 summer time. 02:00 and 02:30 do not
    exist that night; they used to fail the whole batch with a misleading overlap message."""
    host = HostFactory()

    response = bulk_one_night(settings, staff, host, date(2030, 3, 31))

    content = response.content.decode()
    assert response.status_code == 200 and "4 slots created" in content
    assert "Skipped 2 slot(s)" in content and "2030-03-31 02:00, 2030-03-31 02:30" in content
    slots = list(Slot.objects.filter(host=host).order_by("start"))
    assert [(s.start, s.end) for s in slots] == [
        (utc(31, 3, 0, 0), utc(31, 3, 0, 30)),  # 01:00 CET
        (utc(31, 3, 0, 30), utc(31, 3, 1, 0)),  # 01:30 CET, ends at 03:00 CEST
        (utc(31, 3, 1, 0), utc(31, 3, 1, 30)),  # 03:00 CEST
        (utc(31, 3, 1, 30), utc(31, 3, 2, 0)),  # 03:30 CEST
    ]


def test_when_the_clocks_go_forward_a_slot_that_would_overlap_its_neighbour_is_skipped(settings, staff):
    """45-minute slots from 01:00: 01:45 CET lasts until 03:30 CEST, so 03:15 CEST would overlap it."""
    host = HostFactory()

    response = bulk_one_night(settings, staff, host, date(2030, 3, 31), minutes=45, day_end="05:00")

    content = response.content.decode()
    assert "2030-03-31 02:30, 2030-03-31 03:15" in content
    slots = list(Slot.objects.filter(host=host).order_by("start"))
    berlin = ZoneInfo("Europe/Berlin")
    assert [s.start.astimezone(berlin).strftime("%H:%M") for s in slots] == ["01:00", "01:45", "04:00"]
    assert all(s.end - s.start == timedelta(minutes=45) for s in slots)


def test_a_night_made_only_of_missing_times_gives_no_slots_and_says_why(settings, staff):
    host = HostFactory()

    response = bulk_one_night(settings, staff, host, date(2030, 3, 31), day_start="02:00", day_end="03:00")

    content = response.content.decode()
    assert "These settings give no slots. Skipped 2 slot(s)" in content
    assert not Slot.objects.filter(host=host).exists()
