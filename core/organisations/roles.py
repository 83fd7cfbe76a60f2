"""The role ladder of an organisation's members (docs/contract.md §2.6, docs/decisions/0025-organisations.md):
``staff`` < ``manager`` < ``owner``, each allowed what the rungs below it are and its own. Declared once:
the claim policy (in Python and as SQL), the API's refusals and the admin's words all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


class Role(models.TextChoices):
    """A member's role in one organisation, lowest first (the order is the ladder)."""

    STAFF = "staff", "Staff"
    MANAGER = "manager", "Manager"
    OWNER = "owner", "Owner"


@dataclass(frozen=True)
class Rung:
    role: Role
    allows: str  # what this rung adds to those below it, in words (the admin, the errors, the docs)


LADDER: tuple[Rung, ...] = (
    Rung(Role.STAFF, "holds, bookings, cancellations, expiring holds and seat maps"),
    Rung(
        Role.MANAGER, "creating and editing cars, events and slots, opening and closing sales, queues and waiting lists"
    ),
    Rung(Role.OWNER, "members and webhook endpoints"),
)

RANK: dict[str, int] = {rung.role.value: rank for rank, rung in enumerate(LADDER)}


def at_least(role: Role) -> list[str]:
    """The roles that may do what ``role`` may (``role`` and those above it)."""
    return [rung.role.value for rung in LADDER[RANK[role] :]]


def allows(held: str, needed: Role) -> bool:
    """Whether a member with the role ``held`` may do what needs ``needed``."""
    return RANK[held] >= RANK[needed]


def describe(role: Role) -> str:
    """What ``role`` may do, in words: its rung and every rung below."""
    return "; ".join(rung.allows for rung in LADDER[: RANK[role] + 1])
