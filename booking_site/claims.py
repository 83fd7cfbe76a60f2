"""What every claim model shares — a car reservation, a seat hold group, a slot booking: a state
machine with a *held* state that lapses at ``expires_at`` and a *confirmed* state, and one way of
judging time. Each model names its state field and values:

    class Reservation(Claim, models.Model):
        STATE_FIELD, HELD, CONFIRMED = "state", State.HELD, State.CONFIRMED
        TRANSITIONS = {State.HELD: {...}}
        objects = ClaimQuerySet.as_manager()
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from django.db import models
from django.db.models import Case, CharField, F, Q, Value, When
from django.db.models.expressions import Combinable

EXPIRED = "EXPIRED"

_M = TypeVar("_M", bound=models.Model)


class ClaimQuerySet(models.QuerySet[_M]):
    @property
    def claim_model(self) -> type[Claim]:
        """``self.model``, as the Claim it is: a ClaimQuerySet is only ever the manager of a claim model."""
        return cast("type[Claim]", self.model)

    def blocking(self) -> Self:
        """Held or confirmed rows: what the domain's constraint counts, overdue holds included."""
        model = self.claim_model
        return self.filter(**{f"{model.STATE_FIELD}__in": [model.HELD, model.CONFIRMED]})

    def active(self, *, now: datetime | Combinable) -> Self:
        """Claims in force at ``now``: confirmed, or held and not yet overdue (docs/contract.md §2.2)."""
        model = self.claim_model
        return self.filter(
            Q(**{model.STATE_FIELD: model.CONFIRMED}) | Q(**{model.STATE_FIELD: model.HELD, "expires_at__gt": now})
        )

    def overdue(self, *, now: datetime) -> Self:
        """Held claims whose expiry has passed: free for everyone, waiting to be flipped to EXPIRED."""
        model = self.claim_model
        return self.filter(**{model.STATE_FIELD: model.HELD, "expires_at__lte": now})

    def with_effective_state(self, *, now: datetime) -> Self:
        """Annotate ``effective_state``: the state as clients see it, an overdue hold reading as EXPIRED
        before the expiry job has caught up with it (the SQL twin of ``Claim.state_at``)."""
        model = self.claim_model
        return self.annotate(
            effective_state=Case(
                When(**{model.STATE_FIELD: model.HELD, "expires_at__lte": now}, then=Value(EXPIRED)),
                default=F(model.STATE_FIELD),
                output_field=CharField(),
            )
        )


class Claim:
    """Mixin for a claim model (see the module docstring for what it declares)."""

    STATE_FIELD: str
    HELD: str
    CONFIRMED: str
    TRANSITIONS: dict[str, set[str]]
    if TYPE_CHECKING:  # what the model mixing Claim in has (its fields, its manager)
        pk: Any
        expires_at: datetime | None  # set while held (a confirmed slot booking has none)
        objects: Any  # a ClaimQuerySet manager

    @property
    def current_state(self) -> str:
        return getattr(self, self.STATE_FIELD)

    def is_overdue(self, now: datetime) -> bool:
        # A hold always has an expiry; without one a claim is never overdue, as in SQL (``overdue()``).
        return self.current_state == self.HELD and self.expires_at is not None and self.expires_at <= now

    def state_at(self, now: datetime) -> str:
        """The state as clients see it at ``now``: an overdue hold reads as EXPIRED."""
        return EXPIRED if self.is_overdue(now) else self.current_state

    def is_active(self, now: datetime) -> bool:
        return self.current_state == self.CONFIRMED or (self.current_state == self.HELD and not self.is_overdue(now))

    def can_become(self, state: str) -> bool:
        return state in self.TRANSITIONS.get(self.current_state, set())
