from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events and seats"

    def ready(self) -> None:
        from booking_site import expiry
        from events.services import seat_holds_expire_due

        expiry.register("events", seat_holds_expire_due)
