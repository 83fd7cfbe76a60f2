"""What an operator sees, at 1,400 x 900 in headless Chromium (tests/browser.py; issue 19 §4): each page
is read the way a person reads it, by where things are drawn and whether their text fits.
``SCREENSHOTS=/tmp/screens .venv/bin/pytest tests/core/test_screens.py`` keeps the pictures."""

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import override_settings
from django.utils import timezone

from core.organisations.models import Membership
from core.organisations.roles import Role
from reservations.models import Reservation
from slots.availability import availability_clean
from slots.models import Availability
from slots.services import slots as slots_slots
from tests.browser import chromium, operator_screen
from tests.core.worlds import world
from tests.events.factories import make_event, write_hold
from tests.factories import UserFactory, house
from tests.reservations.factories import ReservationFactory
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory
from tests.web.webhooks.test_delivery import events_of
from web.webhooks import services as webhook_services
from web.webhooks.models import WebhookDelivery

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
    slots_slots.availability_set(host=host, fields=availability_clean(document), actor=staff, now=timezone.now())
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
    tuesday = datetime.combine(monday + timedelta(days=1), time(14), tzinfo=zone)
    SlotFactory(host=host, start=tuesday, end=tuesday + timedelta(minutes=15))  # too short for a label
    SlotBookingFactory(
        slot=SlotFactory(start=tuesday + timedelta(hours=1), end=tuesday + timedelta(hours=2)), guest=host
    )

    page = screen.open(f"/admin/slots/availability/{host.pk}/change/?week={monday}", shot="week")

    picture = screen.box(".week-picture")
    assert picture["top"] < 900 - 200, "the week starts within the first screen"
    slot = screen.box(".week-picture .block.slot")
    assert slot["height"] >= 24, "a 30-minute slot is tall enough for its label"
    assert screen.overflowing(".week-picture .block") == []
    assert page.locator(".week-picture .block.slot").first.inner_text().split() == [
        f"#{slots[0].pk}",
        "10:00\N{EN DASH}10:30",
    ]
    booking = screen.box(".week-picture .block.booking")
    assert booking["left"] >= slot["left"] + slot["width"], "the booking is beside its slot, not over its label"


def test_an_operator_types_a_hosts_hours_into_rows_of_times(screen, staff):
    host = HostFactory()
    document = {"timeZone": "Europe/Berlin", "durations": [30], "weekly": [], "overrides": []}
    slots_slots.availability_set(host=host, fields=availability_clean(document), actor=staff, now=timezone.now())

    page = screen.open(f"/admin/slots/availability/{host.pk}/change/", shot="availability-form")
    page.get_by_label("Saturday window 1 from").fill("10:00")
    page.get_by_label("Saturday window 1 to").fill("14:00")
    page.fill('[name="overrides-0-date"]', "2031-12-24")
    page.fill('[name="durations"]', "30, 45")
    page.click('input[name="_continue"]')

    assert "was changed successfully" in screen.text(".messagelist")
    availability = Availability.objects.get(host=host)
    assert availability.weekly == [{"weekday": 5, "start": "10:00", "end": "14:00"}]
    assert availability.overrides == [{"date": "2031-12-24", "windows": []}]
    assert availability.durations == [30, 45]


def test_the_seat_map_is_on_the_event_pages_first_screen(screen):
    event = make_event(layout=(("A", "B", "C"), 10, 20))

    screen.open(f"/admin/events/event/{event.pk}/change/", shot="event")

    seat_map = screen.box(".seat-map")
    assert seat_map["top"] + seat_map["height"] <= 900


def test_the_lists_fit_their_box_at_1400_px(screen, receiver, settings):
    settings.WEBHOOK_RETRY_DELAYS = [3600]
    receiver.answer = lambda received: (500, {})
    make_event(name="Coldplay Music of the Spheres World Tour", location="DY Patil Stadium, Navi Mumbai")
    webhook_services.webhook_endpoint_create(
        organisation_id=house().pk, url=receiver.url + "/booking-site/events?tenant=demo", now=timezone.now()
    )
    events_of(["a", "b"], 2)
    webhook_services.webhooks_deliver()
    ReservationFactory(state=Reservation.State.CONFIRMED)
    write_hold(make_event(total_seats=4), ["S1", "S2"])
    SlotBookingFactory()

    for page in [
        "events/event",
        "webhooks/webhookdelivery",
        "webhooks/webhookendpoint",
        "reservations/reservation",
        "events/seatholdgroup",
        "slots/slotbooking",
        "slots/slot",
    ]:
        screen.open(f"/admin/{page}/", shot=page.replace("/", "-"))
        assert screen.wider_than_its_container() == 0, page


def test_an_endpoints_url_shows_whole_and_each_event_type_beside_its_box(screen, receiver):
    url = receiver.url + "/a-receiver-path/of-some-length/booking-site/events?tenant=demo-clinic"
    endpoint = webhook_services.webhook_endpoint_create(organisation_id=house().pk, url=url, now=timezone.now())

    screen.open(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/", shot="endpoint")

    box = screen.box("#id_url")
    assert box["width"] >= 500 and box["scrollWidth"] <= box["clientWidth"]
    boxes, labels = (
        screen.page.eval_on_selector_all(f"#id_event_types {what}", "es => es.map(e => e.getBoundingClientRect().top)")
        for what in ("input", "label")
    )
    line = screen.box("#id_event_types label")["height"]
    assert all(abs(a - b) < line for a, b in zip(boxes, labels, strict=True))
    assert (
        screen.page.eval_on_selector_all(
            "#id_event_types label", f"es => es.filter(e => e.getBoundingClientRect().height > {line} * 1.5).length"
        )
        == 0
    ), "no label wraps under its box"


def test_the_deliveries_say_why_the_last_attempt_failed(screen, receiver, settings):
    settings.WEBHOOK_RETRY_DELAYS = [3600]
    receiver.answer = lambda received: (503, {})
    webhook_services.webhook_endpoint_create(organisation_id=house().pk, url=receiver.url, now=timezone.now())
    events_of(["a"], 1)
    webhook_services.webhooks_deliver()
    delivery = WebhookDelivery.objects.get()

    page = screen.open("/admin/webhooks/webhookdelivery/?status__exact=PENDING", shot="deliveries")

    headers = [h.strip().lower() for h in page.locator("#result_list thead th").all_inner_texts()]
    assert "last error" in headers
    row = page.locator("#result_list tbody tr").first.locator("td, th").all_inner_texts()
    assert row[headers.index("last error")].strip() == delivery.last_error != ""


def test_a_confirmed_reservation_has_no_expiry_and_the_cap_is_said_in_words(screen, settings):
    confirmed = ReservationFactory(state=Reservation.State.CONFIRMED)
    held = ReservationFactory()

    page = screen.open("/admin/reservations/reservation/", shot="reservations")

    headers = [h.strip().lower() for h in page.locator("#result_list thead th").all_inner_texts()]
    assert "expires at" not in headers
    column = headers.index("hold expires")
    cells = {
        row.locator("th, td").nth(1).inner_text().strip(): row.locator("th, td").nth(column).inner_text().strip()
        for row in page.locator("#result_list tbody tr").all()
    }
    assert cells[str(confirmed.pk)] == "-" and cells[str(held.pk)] != "-"
    for claims in ["reservations/reservation", "events/seatholdgroup", "slots/slotbooking"]:
        screen.open(f"/admin/{claims}/")
        text = screen.text()
        assert "409" not in text and "limit_reached" not in text and "_PER_" not in text, claims
        assert "at most" in text, claims
        assert "setting" in screen.page.get_attribute(".cap-note", "title"), claims


def test_the_test_event_message_names_the_url_as_given(screen, receiver):
    endpoint = webhook_services.webhook_endpoint_create(
        organisation_id=house().pk, url=receiver.url, now=timezone.now()
    )

    page = screen.open("/admin/webhooks/webhookendpoint/")
    page.check(f'input[name="_selected_action"][value="{endpoint.pk}"]')
    page.select_option('select[name="action"]', "send_test_event")
    page.click('button[name="index"]')

    message = screen.text(".messagelist")
    assert f"{receiver.url}: HTTP 200" in message, message


def test_a_staff_member_of_one_organisation_sees_theirs_and_nothing_of_the_other(browser, site):
    """Issue 22: the back office as a ``staff`` of one organisation. Every list, the seat map, the host's
    week and the bookings chart show our rows; the other organisation's name, car, event and host appear
    nowhere; the pages of a manager's or an owner's rung are not offered."""
    ours, theirs = world("ours"), world("theirs")
    staff = UserFactory(is_staff=True, name="Stella Staff")
    Membership.objects.create(user=staff, organisation=ours.organisation, role=Role.STAFF, created_at=timezone.now())
    pages = {
        "org-index": "/admin/",
        "org-cars": "/admin/reservations/car/",
        "org-reservations": "/admin/reservations/reservation/",
        "org-events": "/admin/events/event/",
        "org-holds": "/admin/events/seatholdgroup/",
        "org-slots": "/admin/slots/slot/",
        "org-bookings": "/admin/slots/slotbooking/",
        "org-availability": "/admin/slots/availability/",
        "org-organisations": "/admin/organisations/organisation/",
        "org-event-seat-map": f"/admin/events/event/{ours.event.pk}/change/",
        "org-reservation": f"/admin/reservations/reservation/{ours.reservation.pk}/change/",
        "org-week": f"/admin/slots/availability/{ours.availability.pk}/change/",
        "org-chart": "/admin/slots/slotbooking/analytics/",
    }
    with operator_screen(browser, site, staff) as screen:
        for shot, path in pages.items():
            screen.open(path, shot=shot)
            text = screen.text("#container")
            for theirs_only in (theirs.car.label, theirs.event.name, theirs.availability.host.email, "Theirs"):
                assert theirs_only not in text, (path, theirs_only)
        index = screen.text("#content")
        for managers_or_owners in ("Waitlist entries", "Queue entries", "Webhook endpoints", "Memberships", "Users"):
            assert managers_or_owners not in index
        assert screen.page.goto(site.url + f"/admin/events/event/{theirs.event.pk}/change/").status == 404
