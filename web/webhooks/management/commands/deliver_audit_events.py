from django.core.management.base import BaseCommand

from web.webhooks.tasks import deliver_audit_events


class Command(BaseCommand):
    help = (
        "Deliver the audit trail to the webhook endpoints now: hand every audit event not yet handed on to "
        "the endpoints that want it, then POST every delivery that is due (signed, per Standard Webhooks), "
        "retrying failures on WEBHOOK_RETRY_DELAYS. The same job Celery beat runs every 5 s, run here in "
        "this process; safe while beat runs or twice at once (deliveries are taken with SKIP LOCKED)."
    )

    def handle(self, *args, **options):
        for what, count in deliver_audit_events().items():
            self.stdout.write(f"{what.replace('_', ' ')}: {count}")
