from django.apps import AppConfig


class SlotsConfig(AppConfig):
    name = "slots"
    verbose_name = "Slots and bookings"

    def ready(self) -> None:
        from core import expiry, invariants, reminders
        from slots import calendar
        from slots.invariants import INVARIANTS
        from slots.models import Availability, Slot, SlotBooking
        from slots.reminders import REMINDERS
        from slots.services.bookings import SLOT_BOOKINGS, slot_bookings_expire_due
        from web import ical
        from web.webhooks import organisations

        expiry.register("slots", slot_bookings_expire_due)
        invariants.register_claims(SLOT_BOOKINGS)
        invariants.register(*INVARIANTS)
        reminders.register(REMINDERS)
        invariants.register(REMINDERS.invariant())
        ical.register("slots", calendar.feed_entries)
        organisations.register("slot", Slot, "organisation")
        organisations.register("slotbooking", SlotBooking, "slot__organisation")
        organisations.register("availability", Availability, "organisation")
