from django.core.management.base import BaseCommand

from web.tasks import prune


class Command(BaseCommand):
    help = (
        "Delete idempotency records older than IDEMPOTENCY_TTL_HOURS (default 24), and webhook deliveries "
        "delivered more than WEBHOOK_RETENTION_DAYS ago (default 30) with their attempts. The same job Celery "
        "beat runs hourly, run here in this process; safe to run at any time."
    )

    def handle(self, *args, **options):
        for what, count in prune().items():
            self.stdout.write(f"{what}: deleted {count}")
