"""The events' periodic job (docs/contract.md §7); also ``manage.py admit_queues``."""

from celery import shared_task
from django.utils import timezone

from events.queue import queues_admit_due


@shared_task
def admit_queues() -> dict[str, int]:
    return queues_admit_due(now=timezone.now())
