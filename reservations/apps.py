from django.apps import AppConfig


class ReservationsConfig(AppConfig):
    name = "reservations"
    verbose_name = "Cars and reservations"

    def ready(self) -> None:
        from core import expiry, invariants
        from reservations.invariants import INVARIANTS
        from reservations.services import RESERVATIONS, reservations_expire_due

        expiry.register("reservations", reservations_expire_due)
        invariants.register_claims(RESERVATIONS)
        invariants.register(*INVARIANTS)
