"""Two organisations, each with a row of every kind it owns (issue 22): the admin's BOLA matrix
(tests/core/test_admin_organisations.py) asks for one from the other, the screen tests look at one."""

import uuid
from dataclasses import dataclass, fields

from django.db.models import Model
from django.utils import timezone

from core.audit.models import AuditEvent
from core.organisations.models import Membership, Organisation
from core.organisations.roles import Role
from events.models import Event, EventQueue, QueueEntry, Seat, SeatHoldGroup, WaitlistEntry
from reservations.models import Car, Reservation
from slots.models import Availability, Slot, SlotBooking
from tests.events.factories import EventFactory, write_hold
from tests.factories import UserFactory, member
from tests.reservations.factories import CarFactory, ReservationFactory
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory
from web.webhooks.models import WebhookDelivery, WebhookEndpoint


@dataclass
class World:
    """One organisation and a row of every kind it owns (written directly: the services are not on trial)."""

    organisation: Organisation
    car: Car
    reservation: Reservation  # HELD
    event: Event
    hold: SeatHoldGroup  # HELD
    booking: SeatHoldGroup  # CONFIRMED
    entry: WaitlistEntry
    queue_entry: QueueEntry
    slot: Slot  # booked
    free_slot: Slot  # nobody on it
    slot_booking: SlotBooking  # CONFIRMED
    pending: SlotBooking  # PENDING
    availability: Availability
    endpoint: WebhookEndpoint
    delivery: WebhookDelivery
    membership: Membership

    def rows(self) -> list[Model]:
        return [getattr(self, f.name) for f in fields(self)]

    def of(self, model: type[Model]) -> Model:
        return next(row for row in self.rows() if type(row) is model)


def world(name: str) -> World:
    now = timezone.now()
    organisation = Organisation.objects.create(name=name.title(), slug=name, created_at=now)
    car = CarFactory(organisation=organisation)
    event = EventFactory(organisation=organisation, total_seats=4, waiting_count=1)
    EventQueue.objects.create(event=event, joined=1, credit_from=now)
    Seat.objects.bulk_create([Seat(event=event, code=f"S{n}", row=1, number=n) for n in range(1, 5)])
    host = HostFactory()  # a member of the organisation, as a host's slots and hours need
    member(host, organisation, Role.STAFF)
    slot = SlotFactory(organisation=organisation, host=host, capacity=2)
    endpoint = WebhookEndpoint.objects.create(
        organisation=organisation, url=f"https://{name}.example/hooks", secret="whsec_" + "A" * 32
    )
    return World(
        organisation=organisation,
        car=car,
        reservation=ReservationFactory(car=car),
        event=event,
        hold=write_hold(event, ["S1"]),
        booking=write_hold(event, ["S2"], state="CONFIRMED"),
        entry=WaitlistEntry.objects.create(event=event, user=UserFactory(), quantity=1, created_at=now, updated_at=now),
        queue_entry=QueueEntry.objects.create(
            event=event, user=UserFactory(), token=uuid.uuid4().hex, number=1, joined_at=now
        ),
        slot=slot,
        free_slot=SlotFactory(organisation=organisation, host=host),
        slot_booking=SlotBookingFactory(slot=slot),
        pending=SlotBookingFactory(slot=slot, status=SlotBooking.Status.PENDING),
        availability=Availability.objects.create(
            host=host, organisation=organisation, time_zone="Europe/Berlin", durations=[30], updated_at=now
        ),
        endpoint=endpoint,
        delivery=WebhookDelivery.objects.create(
            endpoint=endpoint, event_type="reservation.created", status=WebhookDelivery.Status.FAILED
        ),
        membership=member(UserFactory(is_staff=True), organisation, Role.OWNER),
    )


def snapshot(world: World) -> list[dict]:
    """Every column of every row of ``world``, and the audit trail: what an action would have changed."""
    rows = [type(row).objects.filter(pk=row.pk).values().get() for row in world.rows()]
    return [*rows, {"audit events": AuditEvent.objects.count()}]
