from django.core.management.base import BaseCommand

from events.tasks import admit_queues


class Command(BaseCommand):
    help = (
        "Run one admission round on every event's queue now: on each event whose queue is on and whose "
        "sales are open, admit the next people in join order, as many as its admittedPerMinute has "
        "accrued since the last round (at most ten seconds' worth), each for its admissionWindowMinutes; "
        "and expire the admissions whose window has passed (one audit event per entry). The same job "
        "Celery beat runs every ADMIT_QUEUES_EVERY_SECONDS (5 s), run here in this process; safe while "
        "beat runs or twice at once (the rounds on one queue take turns on its row lock)."
    )

    def handle(self, *args, **options):
        result = admit_queues()
        self.stdout.write(f"admitted {result['admitted']}, expired {result['expired']}")
