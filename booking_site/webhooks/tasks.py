"""The audit-event job (docs/contract.md §7), also ``manage.py deliver_audit_events``."""

from celery import shared_task

from booking_site.webhooks.services import webhooks_deliver


@shared_task
def deliver_audit_events() -> dict[str, int]:
    return webhooks_deliver().as_dict()
