from django.apps import AppConfig


class SlotsConfig(AppConfig):
    name = "slots"
    verbose_name = "Slots and bookings"

    def ready(self) -> None:
        from booking_site import expiry
        from slots.services import slot_bookings_expire_due

        expiry.register("slots", slot_bookings_expire_due)
