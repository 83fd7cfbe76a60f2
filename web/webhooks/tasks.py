"""The audit-event job (docs/contract.md §7), also ``manage.py deliver_audit_events``."""

from celery import shared_task

from web.webhooks.services import webhooks_deliver


@shared_task(name="booking_site.webhooks.tasks.deliver_audit_events")
def deliver_audit_events() -> dict[str, int]:
    return webhooks_deliver().as_dict()
