"""Hold expiry across domains (docs/contract.md §7): each domain registers its batch expiry service here, in its
AppConfig.ready(); the beat task, ``manage.py expire_holds`` and the staff endpoint run them all. The
batches themselves are ``core.engine.ClaimEngine.expire_due``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

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
    (docs/contract.md §2.2); time never runs backwards for a decision."""
    return max(now, timezone.now())
