"""The browsable API's HTML forms, used as an operator uses them: signed in to the admin, in a browser that
sends the CSRF token, for every POST endpoint of the URLconf."""

import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.views import APIView

from events.models import Event, SeatHoldGroup
from reservations.models import Reservation
from slots.models import SlotBooking
from tests.events.factories import make_event, write_hold
from tests.factories import UserFactory, house
from tests.reservations.factories import CarFactory, ReservationFactory
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory
from web.webhooks.services import webhook_endpoint_create


@dataclass
class Case:
    path: str
    fields: set[str]  # what the form offers: the endpoint's input fields, nothing the server writes
    values: dict[str, str] = field(default_factory=dict)  # what the operator types
    status: int = 200


def _future(days: int, hour: int = 10) -> str:
    """A ``datetime-local`` value, as the browser sends it (no offset: TIME_ZONE)."""
    moment = timezone.localtime() + timedelta(days=days)
    return moment.replace(hour=hour, minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M")


def _cases(staff) -> dict[str, Case]:
    guest = UserFactory()
    car = CarFactory()
    held = ReservationFactory(buyer=guest)
    event = make_event(total_seats=10)
    to_confirm = write_hold(event, ["S1"], user=guest)
    to_release = write_hold(event, ["S2"], user=guest)
    booked = write_hold(event, ["S3"], user=guest, state="CONFIRMED")
    queued = make_event(total_seats=1)
    Event.objects.filter(pk=queued.pk).update(queue_enabled=True)
    slot, other_slot = SlotFactory(), SlotFactory()
    pending = SlotBookingFactory(guest=guest, status=SlotBooking.Status.PENDING)
    confirmed = SlotBookingFactory(guest=guest, slot=slot)
    hook = webhook_endpoint_create(
        organisation_id=house().pk, url="https://hooks.invalid/booking", now=timezone.now()
    )  # never resolves
    return {
        "user-register": Case(
            "/api/users",
            {"email", "name", "roles", "password"},
            {"email": "new@example.com", "name": "New", "roles": "HOST, GUEST", "password": "long enough"},
            201,
        ),
        "calendar-feed": Case("/api/users/me/calendar-feed", set(), status=201),
        "car-list": Case(
            "/api/cars",
            {"organisationId", "dealerId", "label", "make", "model", "status"},
            {"dealerId": "3", "label": "Polestar 2 #1"},
            201,
        ),
        "reservation-list": Case(
            "/api/reservations", {"carId", "buyerId", "holdDurationMinutes"}, {"carId": str(car.pk)}, 201
        ),
        "reservation-confirm": Case(f"/api/reservations/{held.pk}/confirm", set()),
        "reservation-cancel": Case(f"/api/reservations/{held.pk}/cancel", {"reason"}, {"reason": "changed my mind"}),
        "event-list": Case(
            "/api/events",
            {
                "organisationId",
                "name",
                "date",
                "location",
                "totalSeats",
                "layout.sections",
                "layout.rows",
                "layout.seatsPerRow",
                "holdMinutes",
                "salesOpen",
            },
            {
                "name": "Jazz night",
                "date": _future(40, hour=20),
                "location": "Pune",
                "layout.sections": "A, B",
                "layout.rows": "2",
                "layout.seatsPerRow": "3",
            },
            201,
        ),
        "event-seats-reserve": Case(
            f"/api/events/{event.pk}/seats/reserve",
            {"userId", "seatCodes", "quantity"},
            {"seatCodes": "S4, S5", "userId": str(guest.pk)},
            201,
        ),
        "event-seats-confirm": Case(
            f"/api/events/{event.pk}/seats/confirm",
            {"userId", "holdGroupId"},
            {"holdGroupId": str(to_confirm.pk), "userId": str(guest.pk)},
        ),
        "event-seats-release": Case(
            f"/api/events/{event.pk}/seats/release",
            {"userId", "holdGroupId"},
            {"holdGroupId": str(to_release.pk), "userId": str(guest.pk)},
        ),
        "event-queue-join": Case(f"/api/events/{queued.pk}/queue", set(), status=201),
        "event-booking-cancel": Case(f"/api/events/bookings/{booked.booking_group_id}/cancel", {"reason", "seatCodes"}),
        "event-waitlist": Case(
            f"/api/events/{make_event(total_seats=1).pk}/waitlist", {"quantity"}, {"quantity": "2"}, 201
        ),
        "slot-list": Case(
            "/api/slots",
            {"organisationId", "startTime", "endTime", "capacity", "title", "specialization", "hostId"},
            {"startTime": _future(3), "endTime": _future(3, hour=11), "hostId": str(HostFactory().pk)},
            201,
        ),
        "booking-list": Case(
            "/api/bookings",
            {"slotId", "hostId", "startTime", "endTime", "seats", "hold", "metadata", "userId"},
            {"slotId": str(other_slot.pk), "metadata": '{"note": "wheelchair"}', "userId": str(guest.pk)},
            201,
        ),
        "booking-confirm": Case(f"/api/bookings/{pending.pk}/confirm", set()),
        "booking-cancel": Case(f"/api/bookings/{pending.pk}/cancel", {"reason"}),
        "booking-reschedule": Case(
            f"/api/bookings/{confirmed.pk}/reschedule",
            {"slotId", "startTime", "endTime"},
            {"slotId": str(SlotFactory().pk)},
        ),
        "admin-expire-pending": Case("/api/admin/expire-pending", set()),
        "webhook-list": Case(
            "/api/webhooks",
            {"organisationId", "url", "description", "eventTypes", "secret"},
            {"url": "https://shop.invalid/hooks", "eventTypes": "reservation.created, reservation.expired"},
            201,
        ),
        "webhook-rotate-secret": Case(f"/api/webhooks/{hook.pk}/rotate-secret", set()),
        "webhook-test": Case(f"/api/webhooks/{hook.pk}/test", set()),  # sent now: its failure is the answer
        "organisation-list": Case(
            "/api/organisations", {"name", "slug"}, {"name": "Kia Pune", "slug": "kia-pune"}, 201
        ),
        "organisation-members": Case(
            f"/api/organisations/{house().pk}/members", {"email", "role"}, {"email": guest.email, "role": "staff"}, 201
        ),
    }


def _post_endpoints(patterns=None, prefix="") -> set[str]:
    found = set()
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(pattern, URLResolver):
            found |= _post_endpoints(pattern.url_patterns, prefix)
        elif isinstance(pattern, URLPattern):
            view = getattr(pattern.callback, "cls", None)
            if isinstance(view, type) and issubclass(view, APIView) and hasattr(view, "post"):
                found.add(pattern.name)
    return found


class _PostForm(HTMLParser):
    """The fields of the browsable API's HTML POST form, with what a browser would send untouched."""

    def __init__(self):
        super().__init__()
        self.inside = False
        self.values: dict[str, str] = {}
        self.names: set[str] = set()
        self._select = self._textarea = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("id") == "post-object-form":
            self.inside = True
        if not self.inside or ("name" not in attrs and tag != "option"):
            return
        if tag == "input":
            self.names.add(attrs["name"])
            if attrs.get("type") != "checkbox" or "checked" in attrs:
                self.values[attrs["name"]] = attrs.get("value") or ("on" if attrs.get("type") == "checkbox" else "")
        elif tag == "select":
            self._select = attrs["name"]
            self.names.add(self._select)
            self.values.setdefault(self._select, "")
        elif tag == "option" and self._select and "selected" in attrs:
            self.values[self._select] = attrs.get("value", "")
        elif tag == "textarea":
            self._textarea = attrs["name"]
            self.names.add(self._textarea)
            self.values[self._textarea] = ""

    def handle_data(self, data):
        if self._textarea:
            self.values[self._textarea] += data.strip()

    def handle_endtag(self, tag):
        if tag == "form" and self.inside:
            self.inside = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


@pytest.fixture
def operator_browser(staff):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff)
    return browser


def test_every_post_endpoint_of_the_urlconf_has_a_case(staff):
    assert _post_endpoints() == set(_cases(staff))


@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])  # what the form sends; what curl -d sends
@pytest.mark.parametrize("name", sorted(_post_endpoints()))
def test_the_browsable_form_offers_the_input_fields_and_posting_it_works(operator_browser, staff, name, encoding):
    case = _cases(staff)[name]

    page = operator_browser.get(case.path, HTTP_ACCEPT="text/html")
    form = _PostForm()
    form.feed(page.content.decode())

    assert page.status_code in (200, 405), page.content[:500]  # 405: a POST-only endpoint, still with its form
    assert form.names - {"csrfmiddlewaretoken"} == case.fields
    assert form.values.get("csrfmiddlewaretoken")
    assert set(case.values) <= case.fields
    body = {**form.values, **case.values}
    if encoding == "urlencoded":
        response = operator_browser.post(
            case.path, urlencode(body), content_type="application/x-www-form-urlencoded", HTTP_ACCEPT="text/html"
        )
    else:
        response = operator_browser.post(case.path, body, HTTP_ACCEPT="text/html")
    assert response.status_code == case.status, re.sub(r"\s+", " ", response.content.decode())[-1500:]


def test_the_form_starts_with_the_defaults(operator_browser):
    page = operator_browser.get("/api/reservations", HTTP_ACCEPT="text/html")
    form = _PostForm()
    form.feed(page.content.decode())

    assert form.values["holdDurationMinutes"] == "15"
    assert form.values["carId"] == ""
    assert re.search(r"control-label[^>]*>\s*holdDurationMinutes\s*<", page.content.decode())  # its JSON name


def test_a_form_post_lands_as_a_json_client_would_have_sent_it(operator_browser, staff):
    guest = UserFactory()
    event = make_event(total_seats=10)
    page = operator_browser.get(f"/api/events/{event.pk}/seats/reserve", HTTP_ACCEPT="text/html")
    form = _PostForm()
    form.feed(page.content.decode())

    response = operator_browser.post(
        f"/api/events/{event.pk}/seats/reserve",
        {**form.values, "seatCodes": '["S1", "S2"]', "userId": str(guest.pk)},
        HTTP_ACCEPT="application/json",
    )

    assert response.status_code == 201, response.content
    assert sorted(response.json()["seatCodes"]) == ["S1", "S2"]
    assert SeatHoldGroup.objects.get(pk=response.json()["holdGroupId"]).user == guest


def test_a_nested_form_left_as_offered_is_not_given(operator_browser):
    page = operator_browser.get("/api/events", HTTP_ACCEPT="text/html")
    form = _PostForm()
    form.feed(page.content.decode())
    typed = {"name": "Quiz", "date": _future(10), "location": "Goa", "totalSeats": "3"}

    response = operator_browser.post("/api/events", {**form.values, **typed}, HTTP_ACCEPT="application/json")

    assert form.values["layout.sections"] == ""  # its placeholder shows, not "[]"
    assert response.status_code == 201, response.content
    assert (response.json()["totalSeats"], response.json()["salesOpen"]) == (3, True)  # the checkbox's default


def test_a_field_the_form_does_not_have_is_still_refused(operator_browser, staff):
    page = operator_browser.get("/api/reservations", HTTP_ACCEPT="text/html")
    form = _PostForm()
    form.feed(page.content.decode())

    response = operator_browser.post(
        "/api/reservations", {**form.values, "carId": str(CarFactory().pk), "state": "CONFIRMED", "nte": ""}
    )

    assert response.status_code == 400
    fields = json.loads(response.content)["error"]["details"]["fields"]
    assert fields == {"state": ["Unknown field."], "nte": ["Unknown field."]}  # a typo, even left empty
    assert not Reservation.objects.exists()


def test_the_raw_data_form_is_the_input_body_too(operator_browser):
    page = operator_browser.get("/api/reservations", HTTP_ACCEPT="text/html").content.decode()

    raw = re.search(r'<textarea name="_content"[^>]*>(.*?)</textarea>', page, re.S)[1]
    assert json.loads(raw.replace("&quot;", '"')) == {"carId": None, "buyerId": None, "holdDurationMinutes": 15}
