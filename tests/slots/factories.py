from datetime import timedelta

import factory
from django.db.models import F
from django.utils import timezone

from slots.models import Slot, SlotBooking
from tests.factories import UserFactory, house, member
from web.accounts.models import Role


class HostFactory(UserFactory):
    """A host, beside the house organisation (the one there is, where their slots and hours go).
    ``HostFactory(organisation=...)`` makes them a member (staff) of that one too."""

    roles = factory.LazyFunction(lambda: [Role.HOST])

    @factory.post_generation
    def organisation(host, create, extracted, **kwargs):
        if create:
            house()
            if extracted is not None:
                member(host, extracted)


class SlotFactory(factory.django.DjangoModelFactory):
    """A slot written directly (bypassing the services), starting tomorrow plus n hours."""

    class Meta:
        model = Slot

    host = factory.SubFactory(HostFactory)
    organisation = factory.LazyFunction(house)
    title = "Consultation"
    specialization = "cardiology"
    start = factory.Sequence(lambda n: timezone.now().replace(microsecond=0) + timedelta(days=1, hours=n))
    end = factory.LazyAttribute(lambda s: s.start + timedelta(minutes=30))
    capacity = 1
    created_at = factory.LazyFunction(timezone.now)
    updated_at = factory.SelfAttribute("created_at")


class SlotBookingFactory(factory.django.DjangoModelFactory):
    """A booking written directly; a PENDING or CONFIRMED one also takes its seats on the slot's counter,
    as the services would."""

    class Meta:
        model = SlotBooking
        skip_postgeneration_save = True

    slot = factory.SubFactory(SlotFactory)
    guest = factory.SubFactory(UserFactory)
    start = factory.SelfAttribute("slot.start")
    end = factory.SelfAttribute("slot.end")
    seats = 1
    status = SlotBooking.Status.CONFIRMED
    expires_at = factory.LazyAttribute(
        lambda b: b.created_at + timedelta(minutes=10) if b.status == SlotBooking.Status.PENDING else None
    )
    created_at = factory.LazyFunction(timezone.now)
    updated_at = factory.SelfAttribute("created_at")

    @factory.post_generation
    def count_seats(booking, create, extracted, **kwargs):
        if create and booking.status in SlotBooking.BLOCKING_STATES:
            Slot.objects.filter(pk=booking.slot_id).update(booked=F("booked") + booking.seats)
            booking.slot.refresh_from_db()


def morning(days: int):
    """10:00 UTC ``days`` from today: an hour-long appointment then stays inside one day's window of a host
    who works around the clock, whatever the time of day the test runs."""
    return (timezone.now() + timedelta(days=days)).replace(hour=10, minute=0, second=0, microsecond=0)
