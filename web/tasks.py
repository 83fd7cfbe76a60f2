"""The platform's periodic job (docs/contract.md §7), also ``manage.py prune``. Its name is the one it had
in the core, where the beat schedule and the operators' periodic tasks (rows) know it."""

from celery import shared_task
from django.utils import timezone

from web.idempotency import idempotency_prune
from web.webhooks.services import webhook_deliveries_prune


@shared_task(name="booking_site.tasks.prune")
def prune() -> dict[str, int]:
    now = timezone.now()
    return {"idempotency_records": idempotency_prune(now=now), "webhook_attempts": webhook_deliveries_prune(now=now)}
