"""Organisations and their members (docs/contract.md §2.6, docs/decisions/0025-organisations.md).

An organisation — a dealer, an organiser, a practice — owns its cars, events, hosts' slots and availability
and webhook endpoints; its members act on those and on the claims on them, each as far as their role
allows (``core.organisations.roles``). Buyers and guests belong to none: one account books anywhere.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.organisations.roles import Role


class Organisation(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    created_at = models.DateTimeField()
    caller_role: (
        str | None
    )  # the caller's role in it, annotated by the API's list (web.organisations.api), not a column

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """One user's role in one organisation: at most one row per (user, organisation)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=7, choices=Role.choices)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["organisation", "user"]
        constraints = [
            models.UniqueConstraint(fields=["user", "organisation"], name="membership_one_per_user_organisation"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]
        indexes = [models.Index(fields=["organisation", "role"], name="membership_organisation_idx")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.role} of {self.organisation_id}"


# Where a user object keeps its memberships ({organisation id: role}) for the request it serves
# (``core.organisations.access.roles_of``; ``web.accounts.auth`` puts them there with the user).
KEPT_ROLES = "_organisation_roles"


def keep_roles(user, roles: dict[int, str]) -> None:
    """``roles`` as ``user``'s memberships for this request, read with the user."""
    user.__dict__[KEPT_ROLES] = roles
