from django.conf import settings
from django.core.management.base import BaseCommand

from core.tasks import send_reminders


class Command(BaseCommand):
    help = (
        "Send the reminders due now: every confirmed booking (slot bookings, appointments, seat bookings) "
        "that starts within REMINDER_HOURS_BEFORE hours (24) and was made at least that long before its "
        "start gets one REMINDED audit event, delivered to the webhook endpoints as slot_booking.reminded "
        "or seat_hold.reminded, and never a second one. Bookings whose start has passed are left out; a "
        "cancelled or rescheduled booking is not confirmed any more. The same job Celery beat runs every "
        "SEND_REMINDERS_EVERY_SECONDS (60 s), run here in this process; safe while beat runs or twice at "
        "once (rows are claimed with SKIP LOCKED, and each is marked reminded in the statement that records "
        "its event). With REMINDER_HOURS_BEFORE=none it sends nothing."
    )

    def handle(self, *args, **options):
        if settings.REMINDER_HOURS_BEFORE is None:
            self.stdout.write("Reminders are off (REMINDER_HOURS_BEFORE=none).")
            return
        for domain, count in send_reminders().items():
            self.stdout.write(f"{domain}: reminded {count}")
