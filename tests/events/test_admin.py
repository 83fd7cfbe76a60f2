import pytest
from django.test import Client

from booking_site.audit.models import AuditEvent
from events import services
from events.models import Event, Seat, SeatHoldGroup
from tests.events.factories import make_event, write_hold

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
    group = services.seats_hold(event_id=event.pk, user=user, seat_codes=["S1", "S2"], now=_now())
    group = services.seats_confirm(event_id=event.pk, hold_group_id=group.pk, user=user, now=_now())

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
    group = services.seats_hold(event_id=event.pk, user=user, seat_codes=["S1"], now=_now())

    admin_client.post("/admin/events/seatholdgroup/", {"action": "expire_now", "_selected_action": [str(group.pk)]})

    assert SeatHoldGroup.objects.get(pk=group.pk).state == "EXPIRED"


def _now():
    from django.utils import timezone

    return timezone.now()
