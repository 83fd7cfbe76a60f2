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
