from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events and seats"

    def ready(self) -> None:
        from core import expiry, invariants, reminders
        from events import calendar
        from events.invariants import INVARIANTS
        from events.models import Event, QueueEntry, SeatHoldGroup, WaitlistEntry
        from events.queue import SUBJECT as QUEUE_SUBJECT
        from events.reminders import REMINDERS
        from events.services.holds import SEAT_HOLDS
        from events.services.rules import ENTRY_SUBJECT, HOLD_SUBJECT
        from events.services.seat_holds import seat_holds_expire_due
        from web import ical
        from web.webhooks import organisations

        expiry.register("events", seat_holds_expire_due)
        invariants.register_claims(SEAT_HOLDS)
        invariants.register(*INVARIANTS)
        reminders.register(REMINDERS)
        invariants.register(REMINDERS.invariant())
        ical.register("events", calendar.feed_entries)
        organisations.register("event", Event, "organisation")
        organisations.register(HOLD_SUBJECT, SeatHoldGroup, "event__organisation")
        organisations.register(ENTRY_SUBJECT, WaitlistEntry, "event__organisation")
        organisations.register(QUEUE_SUBJECT, QueueEntry, "event__organisation")
