from django.apps import AppConfig


class ReservationsConfig(AppConfig):
    name = "reservations"
    verbose_name = "Cars and reservations"

    def ready(self) -> None:
        from core import expiry, invariants
        from reservations.invariants import INVARIANTS
        from reservations.models import Car, Reservation
        from reservations.services import RESERVATIONS, reservations_expire_due
        from web.webhooks import organisations

        expiry.register("reservations", reservations_expire_due)
        invariants.register_claims(RESERVATIONS)
        invariants.register(*INVARIANTS)
        organisations.register("car", Car, "organisation")
        organisations.register("reservation", Reservation, "car__organisation")
