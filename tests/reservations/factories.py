from datetime import timedelta

import factory
from django.utils import timezone

from reservations.models import Car, Reservation
from tests.factories import UserFactory, house


class CarFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Car

    organisation = factory.LazyFunction(house)
    dealer_id = 1
    make = "Volvo"
    model = "XC40"
    label = factory.Sequence(lambda n: f"Volvo XC40 #{n}")


class ReservationFactory(factory.django.DjangoModelFactory):
    """A reservation row written directly (bypassing the services), for set-ups and constraint tests."""

    class Meta:
        model = Reservation

    car = factory.SubFactory(CarFactory)
    buyer = factory.SubFactory(UserFactory)
    state = Reservation.State.HELD
    created_at = factory.LazyFunction(timezone.now)
    updated_at = factory.SelfAttribute("created_at")
    expires_at = factory.LazyAttribute(lambda r: r.created_at + timedelta(minutes=15))
