"""What an operator sees, at 1,400 x 900 in headless Chromium (tests/browser.py; issue 19 §4): each page
is read the way a person reads it, by where things are drawn and whether their text fits.
``SCREENSHOTS=/tmp/screens .venv/bin/pytest tests/booking_site/test_screens.py`` keeps the pictures."""

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import override_settings
from django.utils import timezone

from slots import services as slot_services
from tests.browser import chromium, operator_screen
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def site(request):
    """pytest-django's live server, on plain HTTP: its middleware reads SECURE_SSL_REDIRECT once, as it
    starts, and the suite's ``_plain_http`` turns it off only for each test, too late for the server."""
    with override_settings(SECURE_SSL_REDIRECT=False):
        return request.getfixturevalue("live_server")


@pytest.fixture
def screen(browser, site, staff):
    with operator_screen(browser, site, staff) as screen:
        yield screen


def next_monday():
    today = timezone.localdate()
    return today + timedelta(days=7 - today.weekday())


def test_the_hosts_week_is_drawn_first_and_legible_at_half_an_hour(screen, staff):
    host = HostFactory()
    document = {
        "timeZone": "Europe/Berlin",
        "durations": [30],
        "overrides": [],
        "minimumNoticeMinutes": 0,
        "bufferMinutes": 0,
        "weekly": [{"weekday": d, "start": "09:00", "end": "17:00"} for d in range(5)],
    }
    slot_services.availability_set(host=host, document=document, actor=staff, now=timezone.now())
    monday, zone = next_monday(), ZoneInfo("Europe/Berlin")
    slots = [
        SlotFactory(
            host=host,
            start=datetime.combine(monday, time(10), tzinfo=zone) + timedelta(minutes=30 * i),
            end=datetime.combine(monday, time(10), tzinfo=zone) + timedelta(minutes=30 * (i + 1)),
            capacity=2,
        )
        for i in range(4)
    ]
    SlotBookingFactory(slot=slots[1])
    SlotBookingFactory(slot=slots[1])

    page = screen.open(f"/admin/slots/availability/{host.pk}/change/?week={monday}", shot="week")

    picture = screen.box(".week-picture")
    assert picture["top"] < 900 - 200, "the week starts within the first screen"
    slot = screen.box(".week-picture .block.slot")
    assert slot["height"] >= 24, "a 30-minute slot is tall enough for its label"
    assert screen.overflowing(".week-picture .block") == []
    assert page.locator(".week-picture .block.slot").first.inner_text().split() == [
        "slot",
        f"#{slots[0].pk}",
        "10:00\N{EN DASH}10:30",
    ]
    booking = screen.box(".week-picture .block.booking")
    assert booking["left"] >= slot["left"] + slot["width"], "the booking is beside its slot, not over its label"
