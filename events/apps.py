from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events and seats"

    def ready(self) -> None:
        from booking_site import expiry, ical, invariants, reminders
        from events import calendar
        from events.invariants import INVARIANTS
        from events.reminders import REMINDERS
        from events.services import SEAT_HOLDS, seat_holds_expire_due

        expiry.register("events", seat_holds_expire_due)
        invariants.register_claims(SEAT_HOLDS)
        invariants.register(*INVARIANTS)
        reminders.register(REMINDERS)
        invariants.register(REMINDERS.invariant())
        ical.register("events", calendar.feed_entries)
