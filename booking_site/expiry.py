"""Hold expiry across domains (SPEC 7): each domain registers its batch expiry service here, in its
AppConfig.ready(); the beat task, ``manage.py expire_holds`` and the staff endpoint run them all."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

ExpireDue = Callable[..., int]  # expire_due(*, now: datetime) -> number of holds expired

_registry: dict[str, ExpireDue] = {}


def register(domain: str, expire_due: ExpireDue) -> None:
    _registry[domain] = expire_due


def expire_all(*, now: datetime) -> dict[str, int]:
    """Expire every overdue hold in every domain; returns the count per domain."""
    return {domain: expire_due(now=now) for domain, expire_due in sorted(_registry.items())}


def locked_now(now: datetime) -> datetime:
    """The time a service judges expiry by once it holds its locks: the request's ``now``, or later when
    the lock wait outlasted it. A hold that expired while a request waited for its lock is expired
    (SPEC 2.2); time never runs backwards for a decision."""
    return max(now, timezone.now())


def expire_in_batches(*, overdue: QuerySet, expire_batch: Callable[[list], None], batch_size: int | None = None) -> int:
    """The shape of every domain's expiry job: lock up to ``batch_size`` overdue rows with SKIP LOCKED,
    let ``expire_batch`` flip them (and record their audit events) in the same transaction, repeat.

    SKIP LOCKED makes two runs at once share the rows instead of doing them twice; a row locked by a
    request in flight is left to that request. Returns how many rows were expired.
    """
    batch_size = batch_size or settings.EXPIRY_BATCH_SIZE
    total = 0
    while True:
        with transaction.atomic():
            batch = list(overdue.select_for_update(skip_locked=True).order_by("pk")[:batch_size])
            if batch:
                expire_batch(batch)
        total += len(batch)
        if len(batch) < batch_size:
            return total
