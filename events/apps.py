from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events and seats"

    def ready(self) -> None:
        from core import expiry, invariants, reminders
        from events import calendar
        from events.invariants import INVARIANTS
        from events.reminders import REMINDERS
        from events.services.holds import SEAT_HOLDS
        from events.services.seat_holds import seat_holds_expire_due
        from web import ical

        expiry.register("events", seat_holds_expire_due)
        invariants.register_claims(SEAT_HOLDS)
        invariants.register(*INVARIANTS)
        reminders.register(REMINDERS)
        invariants.register(REMINDERS.invariant())
        ical.register("events", calendar.feed_entries)
