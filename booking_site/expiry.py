"""Hold expiry across domains (SPEC 7): each domain registers its batch expiry service here, in its
AppConfig.ready(); the beat task, ``manage.py expire_holds`` and the staff endpoint run them all."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

ExpireDue = Callable[..., int]  # expire_due(*, now: datetime) -> number of holds expired

_registry: dict[str, ExpireDue] = {}


def register(domain: str, expire_due: ExpireDue) -> None:
    _registry[domain] = expire_due


def expire_all(*, now: datetime) -> dict[str, int]:
    """Expire every overdue hold in every domain; returns the count per domain."""
    return {domain: expire_due(now=now) for domain, expire_due in sorted(_registry.items())}
