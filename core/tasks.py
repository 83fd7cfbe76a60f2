"""The core's periodic jobs (docs/contract.md §7); each is also a management command of the same name. The
platform's (pruning) is ``web/tasks.py``'s."""

from celery import shared_task
from django.utils import timezone

from core.expiry import expire_all
from core.invariants import invariants_check
from core.reminders import reminders_send


@shared_task(name="booking_site.tasks.expire_holds")
def expire_holds() -> dict[str, int]:
    return expire_all(now=timezone.now())


@shared_task(name="booking_site.tasks.check_invariants")
def check_invariants() -> dict[str, int]:
    return {r["name"]: r["violations"] for r in invariants_check(now=timezone.now()).results}


@shared_task(name="booking_site.tasks.send_reminders")
def send_reminders() -> dict[str, int]:
    return reminders_send(now=timezone.now())
