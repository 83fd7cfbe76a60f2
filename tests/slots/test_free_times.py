"""The free-time search (``GET /api/users/{hostId}/slots``, ``slots.selectors.free_times``): a host's hours in
their time zone, across DST, with the minimum notice, buffers and whatever already takes the host's time."""

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from core.errors import ValidationFailed
from slots import selectors
from slots.availability import availability_clean
from slots.models import Slot
from slots.services import slots as slots_slots
from tests.slots.factories import HostFactory, SlotFactory

pytestmark = pytest.mark.django_db

BERLIN = ZoneInfo("Europe/Berlin")
NINE_TO_FIVE = [{"weekday": day, "start": "09:00", "end": "17:00"} for day in range(5)]


def host_with(**document):
    host = HostFactory()
    slots_slots.availability_set(
        host=host,
        fields=availability_clean(
            {"timeZone": "Europe/Berlin", "weekly": NINE_TO_FIVE, "durations": [30, 60], **document}
        ),
        actor=host,
        now=timezone.now(),
    )
    return host


def berlin(*args) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def free(host, start, end, minutes=60, now=None) -> list[datetime]:
    now = now or berlin(2027, 1, 1)
    return [s for s, _ in selectors.free_times(host_id=host.pk, start=start, end=end, minutes=minutes, now=now)]


def local(moments: list[datetime]) -> list[str]:
    return [m.astimezone(BERLIN).strftime("%a %H:%M") for m in moments]


def test_every_start_stepped_by_the_length_from_each_window_start_inside_the_hours():
    host = host_with(
        weekly=[{"weekday": 0, "start": "09:00", "end": "12:00"}, {"weekday": 0, "start": "13:00", "end": "15:30"}]
    )

    assert local(free(host, date(2027, 1, 4), date(2027, 1, 10))) == [
        "Mon 09:00", "Mon 10:00", "Mon 11:00", "Mon 13:00", "Mon 14:00",
    ]  # fmt: skip
    assert len(free(host, date(2027, 1, 4), date(2027, 1, 4), minutes=30)) == 6 + 5


def test_the_hours_are_wall_clock_times_on_both_sides_of_the_march_change():
    host = host_with()

    before = free(host, date(2027, 3, 26), date(2027, 3, 26))  # Friday, CET (UTC+1)
    after = free(host, date(2027, 3, 29), date(2027, 3, 29))  # Monday, CEST (UTC+2)

    assert before[0] == datetime(2027, 3, 26, 8, tzinfo=UTC) and len(before) == 8
    assert after[0] == datetime(2027, 3, 29, 7, tzinfo=UTC) and len(after) == 8
    assert free(host, date(2027, 3, 27), date(2027, 3, 28)) == []  # the weekend


def test_the_hours_are_wall_clock_times_on_both_sides_of_the_october_change():
    host = host_with()

    assert free(host, date(2027, 10, 29), date(2027, 10, 29))[0] == datetime(2027, 10, 29, 7, tzinfo=UTC)
    assert free(host, date(2027, 11, 1), date(2027, 11, 1))[0] == datetime(2027, 11, 1, 8, tzinfo=UTC)


def test_a_window_over_the_night_the_clocks_go_forward_lasts_an_hour_less():
    host = host_with(overrides=[{"date": "2027-03-28", "windows": [{"start": "01:00", "end": "04:00"}]}])

    found = free(host, date(2027, 3, 28), date(2027, 3, 28), minutes=30)

    assert local(found) == ["Sun 01:00", "Sun 01:30", "Sun 03:00", "Sun 03:30"]
    assert [m.astimezone(UTC).hour for m in found] == [0, 0, 1, 1]


def test_a_window_over_the_night_the_clocks_go_back_lasts_an_hour_more():
    host = host_with(overrides=[{"date": "2027-10-31", "windows": [{"start": "01:00", "end": "04:00"}]}])

    found = free(host, date(2027, 10, 31), date(2027, 10, 31), minutes=30)

    assert len(found) == 8  # 02:00 and 02:30 twice, once in CEST and once in CET
    assert found[0] == datetime(2027, 10, 30, 23, tzinfo=UTC) and found[-1] == datetime(2027, 10, 31, 2, 30, tzinfo=UTC)
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(found))


def test_an_override_is_a_day_off_or_other_hours_on_that_date():
    host = host_with(
        overrides=[
            {"date": "2027-01-04", "windows": []},
            {"date": "2027-01-05", "windows": [{"start": "10:00", "end": "12:00"}]},
            {"date": "2027-01-09", "windows": [{"start": "10:00", "end": "11:00"}]},  # a Saturday
        ]
    )

    assert local(free(host, date(2027, 1, 4), date(2027, 1, 5))) == ["Tue 10:00", "Tue 11:00"]
    assert local(free(host, date(2027, 1, 9), date(2027, 1, 10))) == ["Sat 10:00"]


def test_nothing_sooner_than_the_minimum_notice():
    host = host_with(minimumNoticeMinutes=60)

    found = free(host, date(2027, 1, 4), date(2027, 1, 4), minutes=30, now=berlin(2027, 1, 4, 10, 10))

    assert local(found)[0] == "Mon 11:30"


def test_a_published_slot_and_the_buffer_around_it_take_the_hosts_time():
    host = host_with(bufferMinutes=10)
    SlotFactory(host=host, start=berlin(2027, 1, 4, 12), end=berlin(2027, 1, 4, 12, 30))
    SlotFactory(host=host, start=berlin(2027, 1, 4, 15), end=berlin(2027, 1, 4, 16), status=Slot.Status.CANCELLED)
    SlotFactory(start=berlin(2027, 1, 4, 9), end=berlin(2027, 1, 4, 17))  # another host's

    found = local(free(host, date(2027, 1, 4), date(2027, 1, 4), minutes=30))

    assert "Mon 11:00" in found and "Mon 13:00" in found and "Mon 15:00" in found
    assert not {"Mon 11:30", "Mon 12:00", "Mon 12:30"} & set(found)
    assert len(found) == 16 - 3


def test_a_datetime_range_is_taken_as_it_is_and_an_appointment_must_fit_inside_it():
    host = host_with()

    found = free(host, berlin(2027, 1, 4, 10, 30), berlin(2027, 1, 4, 13, 30))

    assert local(found) == ["Mon 11:00", "Mon 12:00"]


@pytest.mark.parametrize(
    ("minutes", "start", "end", "field"),
    [
        (45, date(2027, 1, 4), date(2027, 1, 5), "slotDuration"),
        (60, date(2027, 1, 1), date(2027, 3, 4), "endDate"),
        (60, date(2027, 1, 5), date(2027, 1, 4), "endDate"),
    ],
)
def test_a_length_not_offered_or_a_range_too_long_or_backwards_is_refused(minutes, start, end, field):
    host = host_with()

    with pytest.raises(ValidationFailed) as refused:
        free(host, start, end, minutes=minutes)

    assert list(refused.value.details["fields"]) == [field]


def test_sixty_two_days_is_fine():
    host = host_with()

    assert len(free(host, date(2027, 1, 1), date(2027, 3, 3))) == 8 * 44


# --- the API ------------------------------------------------------------------------------------


def test_the_search_answers_seeds_003s_shape(api):
    host = host_with()
    monday = (timezone.now().astimezone(BERLIN) + timedelta(days=7)).date()
    monday -= timedelta(days=monday.weekday())

    response = api.get(f"/api/users/{host.pk}/slots", {"startDate": monday, "endDate": monday, "slotDuration": 60})

    assert response.status_code == 200, response.content
    slots = response.json()["slots"]
    assert len(slots) == 8
    start = datetime.fromisoformat(slots[0]["startTime"])
    assert start.astimezone(BERLIN).hour == 9
    assert datetime.fromisoformat(slots[0]["endTime"]) - start == timedelta(hours=1)


@pytest.mark.parametrize(
    "query",
    [
        {"startDate": "2027-01-04", "endDate": "2027-01-05"},
        {"startDate": "yesterday", "endDate": "2027-01-05", "slotDuration": 30},
        {"startDate": "2027-01-04T09:00:00", "endDate": "2027-01-05", "slotDuration": 30},
        {"startDate": "2027-01-04", "endDate": "2027-01-05", "slotDuration": 45},
        {"startDate": "2027-01-04", "endDate": "2027-04-05", "slotDuration": 30},
        {"startDate": "0001-01-01", "endDate": "0001-01-02", "slotDuration": 30},
    ],
)
def test_bad_queries_are_400s(api, query):
    host = host_with()

    response = api.get(f"/api/users/{host.pk}/slots", query)

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "validation_error"


def test_only_a_host_has_free_times(api, user):
    query = {"startDate": "2027-01-04", "endDate": "2027-01-05", "slotDuration": 30}

    assert api.get(f"/api/users/{user.pk}/slots", query).status_code == 404
    assert api.get(f"/api/users/{HostFactory().pk}/slots", query).status_code == 400  # offers nothing yet
