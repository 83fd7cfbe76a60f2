"""Broken object-level authorization, as a matrix (docs/contract.md §2.6): two organisations, every role, and
every operator endpoint. A member of one organisation asking for the other's object gets 404 and changes
nothing in the database; an ``organisationId`` of the other organisation in a body is 404, never written.
For their own organisation's object each role gets the documented answer: done, or 403 ``role_required``
below the role the ladder (``core.organisations.roles``) asks for."""

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from core.audit.models import AuditEvent
from core.organisations.models import Membership, Organisation
from core.organisations.roles import Role, allows
from events.models import Event, EventQueue, QueueEntry, SeatHoldGroup, WaitlistEntry
from events.queue import TOKEN_BYTES
from reservations.models import Car, Reservation
from slots.models import Slot, SlotBooking
from tests.events.factories import make_event, write_hold
from tests.factories import OrganisationFactory, UserFactory, member
from tests.reservations.factories import CarFactory, ReservationFactory
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory
from web.webhooks.models import WebhookDelivery, WebhookEndpoint
from web.webhooks.services import webhook_endpoint_create


@dataclass
class World:
    """One organisation's objects, each an operator endpoint's target."""

    organisation: Organisation
    buyer: int
    car: int
    free_car: int
    reservation: int
    event: int
    hold: str
    booked: str
    waiting_event: int
    entry: int
    token: str
    host: int
    slot: int
    free_slot: int
    pending: int
    confirmed: int
    hook: int
    member: int


def world(organisation: Organisation) -> World:
    buyer = UserFactory()
    car, free_car = CarFactory(organisation=organisation), CarFactory(organisation=organisation)
    event = make_event(total_seats=10, organisation_id=organisation.pk)
    host = HostFactory(organisation=organisation)
    slot = SlotFactory(organisation=organisation, host=host)
    # Another host's: a guest has one active booking with a host at most.
    free_slot = SlotFactory(organisation=organisation, host=HostFactory(organisation=organisation), capacity=5)
    booked_slot = SlotFactory(organisation=organisation, host=HostFactory(organisation=organisation))
    # Its own event: a waiting list ahead of them turns the seat holds on ``event`` away.
    waiting_event = make_event(total_seats=1, organisation_id=organisation.pk)
    Event.objects.filter(pk=waiting_event.pk).update(waiting_count=1)
    now = timezone.now()
    entry = WaitlistEntry.objects.create(event=waiting_event, user=buyer, quantity=1, created_at=now, updated_at=now)
    EventQueue.objects.create(event=event, joined=1, credit_from=now)
    token = secrets.token_urlsafe(TOKEN_BYTES)  # the shape a join gives
    queued = QueueEntry.objects.create(event=event, user=buyer, token=token, number=1, joined_at=now)
    hook = webhook_endpoint_create(organisation_id=organisation.pk, url="https://hooks.invalid/x", now=timezone.now())
    return World(
        organisation=organisation,
        buyer=buyer.pk,
        car=car.pk,
        free_car=free_car.pk,
        reservation=ReservationFactory(car=car, buyer=buyer).pk,
        event=event.pk,
        hold=str(write_hold(event, ["S1"], user=buyer).pk),
        booked=str(write_hold(event, ["S2"], user=buyer, state="CONFIRMED").booking_group_id),
        waiting_event=waiting_event.pk,
        entry=entry.pk,
        token=queued.token,
        host=host.pk,
        slot=slot.pk,
        free_slot=free_slot.pk,
        pending=SlotBookingFactory(slot=slot, guest=buyer, status=SlotBooking.Status.PENDING).pk,
        confirmed=SlotBookingFactory(slot=booked_slot, guest=buyer, status=SlotBooking.Status.CONFIRMED).pk,
        hook=hook.pk,
        member=member(UserFactory(), organisation).user_id,
    )


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # formatted with a World's fields
    role: Role  # what the ladder asks of a member for it
    success: int
    body: dict | None = None  # formatted likewise (its string values)
    sends: bool = False  # done, it sends a request out: asked of the other organisation and of lower roles only


def _tomorrow(hour: int) -> str:
    return (timezone.now() + timedelta(days=1)).replace(hour=hour, minute=0, second=0, microsecond=0).isoformat()


STAFF, MANAGER, OWNER = Role.STAFF, Role.MANAGER, Role.OWNER
ENDPOINTS = {
    "car-create": Endpoint(
        "post", "/api/cars", MANAGER, 201, {"organisationId": "{organisation.pk}", "dealerId": 1, "label": "x"}
    ),
    "reservation-hold-for-a-buyer": Endpoint(
        "post", "/api/reservations", STAFF, 201, {"carId": "{free_car}", "buyerId": "{buyer}"}
    ),
    "reservation-read": Endpoint("get", "/api/reservations/{reservation}", STAFF, 200),
    "reservation-of-car": Endpoint("get", "/api/reservations/car/{car}", STAFF, 200),
    "reservation-trail": Endpoint("get", "/api/reservations/{reservation}/events", STAFF, 200),
    "reservation-confirm": Endpoint("post", "/api/reservations/{reservation}/confirm", STAFF, 200, {}),
    "reservation-cancel": Endpoint("post", "/api/reservations/{reservation}/cancel", STAFF, 200, {}),
    "event-create": Endpoint(
        "post",
        "/api/events",
        MANAGER,
        201,
        {"organisationId": "{organisation.pk}", "name": "x", "date": _tomorrow(20), "location": "x", "totalSeats": 1},
    ),
    "event-edit": Endpoint("patch", "/api/events/{event}", MANAGER, 200, {"name": "renamed"}),
    "seats-hold-for-a-buyer": Endpoint(
        "post", "/api/events/{event}/seats/reserve", STAFF, 201, {"seatCodes": ["S5"], "userId": "{buyer}"}
    ),
    "seats-confirm-for-a-buyer": Endpoint(
        "post", "/api/events/{event}/seats/confirm", STAFF, 200, {"holdGroupId": "{hold}", "userId": "{buyer}"}
    ),
    "seats-release-for-a-buyer": Endpoint(
        "post", "/api/events/{event}/seats/release", STAFF, 200, {"holdGroupId": "{hold}", "userId": "{buyer}"}
    ),
    "seat-hold-read": Endpoint("get", "/api/events/holds/{hold}", STAFF, 200),
    "seat-booking-read": Endpoint("get", "/api/events/bookings/{booked}", STAFF, 200),
    "seat-booking-cancel": Endpoint("post", "/api/events/bookings/{booked}/cancel", STAFF, 200, {}),
    "seat-booking-calendar": Endpoint("get", "/api/events/bookings/{booked}/calendar", STAFF, 200),
    "waitlist-entry-read": Endpoint("get", "/api/events/{waiting_event}/waitlist/{entry}", STAFF, 200),
    "waitlist-entry-remove": Endpoint("delete", "/api/events/{waiting_event}/waitlist/{entry}", MANAGER, 200),
    "queue-entry-read": Endpoint("get", "/api/events/{event}/queue/{token}", STAFF, 200),
    "slot-create-for-a-host": Endpoint(
        "post",
        "/api/slots",
        MANAGER,
        201,
        {
            "organisationId": "{organisation.pk}",
            "hostId": "{host}",
            "startTime": _tomorrow(22),
            "endTime": _tomorrow(23),
        },
    ),
    "slot-withdraw": Endpoint("delete", "/api/slots/{free_slot}", MANAGER, 200),
    "slot-booking-for-a-guest": Endpoint(
        "post", "/api/bookings", STAFF, 201, {"slotId": "{free_slot}", "userId": "{buyer}"}
    ),
    "slot-booking-read": Endpoint("get", "/api/bookings/{pending}", STAFF, 200),
    "slot-booking-confirm": Endpoint("post", "/api/bookings/{pending}/confirm", STAFF, 200, {}),
    "slot-booking-cancel": Endpoint("post", "/api/bookings/{pending}/cancel", STAFF, 200, {}),
    "slot-booking-calendar": Endpoint("get", "/api/bookings/{confirmed}/calendar", STAFF, 200),
    "analytics": Endpoint(
        "get",
        "/api/admin/analytics?start_date=2026-01-01&end_date=2026-12-31&organisation={organisation.pk}",
        STAFF,
        200,
    ),
    "webhook-create": Endpoint(
        "post", "/api/webhooks", OWNER, 201, {"organisationId": "{organisation.pk}", "url": "https://hooks.invalid/y"}
    ),
    "webhook-read": Endpoint("get", "/api/webhooks/{hook}", OWNER, 200),
    "webhook-edit": Endpoint("patch", "/api/webhooks/{hook}", OWNER, 200, {"description": "mine now"}),
    "webhook-rotate-secret": Endpoint("post", "/api/webhooks/{hook}/rotate-secret", OWNER, 200, {}),
    "webhook-deliveries": Endpoint("get", "/api/webhooks/{hook}/deliveries", OWNER, 200),
    "webhook-test": Endpoint("post", "/api/webhooks/{hook}/test", OWNER, 200, {}, sends=True),
    "webhook-delete": Endpoint("delete", "/api/webhooks/{hook}", OWNER, 204),
    "members-read": Endpoint("get", "/api/organisations/{organisation.pk}/members", OWNER, 200),
    "member-add": Endpoint(
        "post", "/api/organisations/{organisation.pk}/members", OWNER, 201, {"email": "{outsider}", "role": "staff"}
    ),
    "member-remove": Endpoint("delete", "/api/organisations/{organisation.pk}/members/{member}", OWNER, 204),
}

# What a refused request must leave as it was: every row an operator endpoint can write.
WATCHED = [
    Organisation,
    Membership,
    Car,
    Reservation,
    Event,
    SeatHoldGroup,
    WaitlistEntry,
    QueueEntry,
    Slot,
    SlotBooking,
    WebhookEndpoint,
    WebhookDelivery,
]


def snapshot() -> dict:
    rows = {model.__name__: list(model.objects.order_by("pk").values()) for model in WATCHED}
    return {**rows, "audit": AuditEvent.objects.count()}


def ask(client, endpoint: Endpoint, target: World, outsider: str):
    fields = {**target.__dict__, "outsider": outsider}
    path = endpoint.path.format(**fields)
    if endpoint.body is None:
        return getattr(client, endpoint.method)(path)
    body = {k: v.format(**fields) if isinstance(v, str) else v for k, v in endpoint.body.items()}
    body = {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in body.items()}
    return getattr(client, endpoint.method)(path, body, format="json")


@pytest.fixture
def two(db):
    ours, theirs = OrganisationFactory(), OrganisationFactory()
    return world(ours), world(theirs)


@pytest.mark.parametrize("role", [STAFF, MANAGER, OWNER])
@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_another_organisations_object_is_404_and_nothing_changes(two, client_for, role, name):
    ours, theirs = two
    caller = UserFactory()
    member(caller, ours.organisation, role)
    before = snapshot()

    response = ask(client_for(caller), ENDPOINTS[name], theirs, outsider=UserFactory().email)

    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "not_found"
    assert snapshot() == before


# Every endpoint for every role, but one that would send a request out for a role that may (``sends``).
OWN = [
    (name, role)
    for name in sorted(ENDPOINTS)
    for role in (STAFF, MANAGER, OWNER)
    if not (ENDPOINTS[name].sends and allows(role, ENDPOINTS[name].role))
]


@pytest.mark.parametrize(("name", "role"), OWN, ids=[f"{name}-{role.value}" for name, role in OWN])
def test_in_its_own_organisation_each_role_gets_the_documented_answer(two, client_for, role, name):
    ours, _ = two
    caller = UserFactory()
    member(caller, ours.organisation, role)
    endpoint = ENDPOINTS[name]
    before = snapshot()

    response = ask(client_for(caller), endpoint, ours, outsider=UserFactory().email)

    if allows(role, endpoint.role):
        assert response.status_code == endpoint.success, response.content
    else:
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "role_required"
        assert response.json()["error"]["details"] == {
            "role": endpoint.role.value,
            "organisationId": ours.organisation.pk,
        }
        assert snapshot() == before


def _template(path: str) -> str:
    """A path with its ids as ``{}``, whatever their names (the schema's ``{endpoint_id}``, the matrix's ``{hook}``)."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_the_schema_lists_role_required_where_a_lower_role_gets_it():
    """The answers above, in the schema: each endpoint a lower role is refused lists 403 ``role_required``."""
    paths = SchemaGenerator().get_schema(public=True)["paths"]
    operations = {(method, _template(path)): op for path, ops in paths.items() for method, op in ops.items()}
    missing = [
        name
        for name, endpoint in sorted(ENDPOINTS.items())
        if endpoint.role != STAFF
        and "role_required"
        not in operations[endpoint.method, _template(endpoint.path)]["responses"]["403"]["x-error-codes"]
    ]
    assert missing == []
