"""The platform's periodic jobs (docs/contract.md §7); each is also a management command of the same name."""

from celery import shared_task
from django.utils import timezone

from booking_site.expiry import expire_all
from booking_site.idempotency import idempotency_prune
from booking_site.invariants import invariants_check
from booking_site.reminders import reminders_send
from booking_site.webhooks.services import webhook_deliveries_prune


@shared_task
def expire_holds() -> dict[str, int]:
    return expire_all(now=timezone.now())


@shared_task
def prune() -> dict[str, int]:
    now = timezone.now()
    return {"idempotency_records": idempotency_prune(now=now), "webhook_attempts": webhook_deliveries_prune(now=now)}


@shared_task
def check_invariants() -> dict[str, int]:
    return {r["name"]: r["violations"] for r in invariants_check(now=timezone.now()).results}


@shared_task
def send_reminders() -> dict[str, int]:
    return reminders_send(now=timezone.now())
