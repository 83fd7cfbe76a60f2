import django_filters as filters

from reservations.models import Car, Reservation
from web.api import IdFilter, StrictBooleanFilter


class CarFilter(filters.FilterSet):
    available = StrictBooleanFilter(help_text="true: ACTIVE and no active reservation now")
    organisation = IdFilter(field_name="organisation_id")
    dealerId = IdFilter(field_name="dealer_id")
    status = filters.ChoiceFilter(choices=Car.Status.choices)

    class Meta:
        model = Car
        fields: list[str] = []


class ReservationFilter(filters.FilterSet):
    state = filters.ChoiceFilter(
        choices=Reservation.State.choices, field_name="effective_state", help_text="An overdue HELD counts as EXPIRED"
    )
    carId = IdFilter(field_name="car_id")
    organisation = IdFilter(field_name="car__organisation_id")

    class Meta:
        model = Reservation
        fields: list[str] = []
