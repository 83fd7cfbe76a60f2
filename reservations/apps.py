from django.apps import AppConfig


class ReservationsConfig(AppConfig):
    name = "reservations"
    verbose_name = "Cars and reservations"

    def ready(self) -> None:
        from booking_site import expiry
        from reservations.services import reservations_expire_due

        expiry.register("reservations", reservations_expire_due)
