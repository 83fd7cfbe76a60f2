"""What every claim model shares — a car reservation, a seat hold group, a slot booking: a state
machine with a *held* state that lapses at ``expires_at`` and a *confirmed* state, and one way of
judging time. Each model names its state field and values:

    class Reservation(Claim, models.Model):
        STATE_FIELD, HELD, CONFIRMED = "state", State.HELD, State.CONFIRMED
        TRANSITIONS = {State.HELD: {...}}
        objects = ClaimQuerySet.as_manager()
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from django.db import models
from django.db.models import Case, CharField, F, Q, Value, When
from django.db.models.expressions import Combinable
from psycopg import sql

EXPIRED = "EXPIRED"

_M = TypeVar("_M", bound=models.Model)


def column(model: type[models.Model], field: str, alias: str = "") -> sql.Identifier:
    """The column of ``model``'s field ``field`` (``car`` is ``car_id``) for a composed statement,
    qualified by ``alias`` if given."""
    name = cast(str, cast(models.Field, model._meta.get_field(field)).column)  # a concrete field: it has a column
    return sql.Identifier(alias, name) if alias else sql.Identifier(name)


@dataclass(frozen=True)
class Rows:
    """Which claims of a claim model a rule is about, declared once: in words (the admin's text, a
    refusal's message), as an ORM condition (``q``, judged at ``now``) and as SQL for a composed
    statement (``sql``, judged at its parameter ``%(now)s``), over any claim model's state column and
    values and its ``expires_at``."""

    words: str
    states: Callable[[type[Claim]], tuple[str, ...]]  # the states the rows are in
    lapse: str = ""  # "live": a held row counts until expires_at; "overdue": only from then; "": either way

    def q(self, model: type[Claim], *, now: datetime | Combinable | None = None) -> Q:
        held, others = self._split(model)
        parts = [Q(**{f"{model.STATE_FIELD}__in": others})] if others else []
        if held:
            lapse = {"live": {"expires_at__gt": now}, "overdue": {"expires_at__lte": now}}.get(self.lapse, {})
            parts.append(Q(**{model.STATE_FIELD: model.HELD, **lapse}))
        return functools.reduce(operator.or_, parts)

    def sql(self, model: type[Claim], alias: str = "", *, now: sql.Composable | None = None) -> sql.Composable:
        """``now``: what the lapse is judged at (``%(now)s`` unless given: a column a statement computed)."""
        state = column(model, model.STATE_FIELD, alias)  # type: ignore[arg-type]  # a Claim is a Model
        held, others = self._split(model) if self.lapse else (False, list(self.states(model)))
        parts: list[sql.Composable] = []
        if others:
            parts.append(sql.SQL("{} IN ({})").format(state, sql.SQL(", ").join(map(sql.Literal, others))))
        if held:
            expires = column(model, "expires_at", alias)  # type: ignore[arg-type]  # a Claim is a Model
            lapse = {"live": sql.SQL("{} > {}"), "overdue": sql.SQL("{} <= {}")}[self.lapse]
            at = now if now is not None else sql.Placeholder("now")
            parts.append(sql.SQL("({} = {} AND {})").format(state, sql.Literal(model.HELD), lapse.format(expires, at)))
        return sql.SQL("({})").format(sql.SQL(" OR ").join(parts) if parts else sql.SQL("false"))

    def _split(self, model: type[Claim]) -> tuple[bool, list[str]]:
        states = self.states(model)
        return model.HELD in states, [s for s in states if s != model.HELD]


# The rows of every claim's lifecycle (docs/contract.md §2.2: an overdue hold is not active).
LIVE_HOLDS = Rows("holds not yet expired (confirmed ones do not count)", lambda m: (m.HELD,), lapse="live")
CONFIRMED = Rows("confirmed ones (holds do not count)", lambda m: (m.CONFIRMED,))
ACTIVE = Rows("confirmed ones and holds not yet expired", lambda m: (m.CONFIRMED, m.HELD), lapse="live")
OVERDUE = Rows("holds past their expiry", lambda m: (m.HELD,), lapse="overdue")
BLOCKING = Rows("held or confirmed ones, overdue holds included", lambda m: (m.HELD, m.CONFIRMED))


class ClaimQuerySet(models.QuerySet[_M]):
    @property
    def claim_model(self) -> type[Claim]:
        """``self.model``, as the Claim it is: a ClaimQuerySet is only ever the manager of a claim model."""
        return cast("type[Claim]", self.model)

    def blocking(self) -> Self:
        """Held or confirmed rows: what the domain's constraint counts, overdue holds included."""
        return self.filter(BLOCKING.q(self.claim_model))

    def active(self, *, now: datetime | Combinable) -> Self:
        """Claims in force at ``now``: confirmed, or held and not yet overdue (docs/contract.md §2.2)."""
        return self.filter(ACTIVE.q(self.claim_model, now=now))

    def overdue(self, *, now: datetime) -> Self:
        """Held claims whose expiry has passed: free for everyone, waiting to be flipped to EXPIRED."""
        return self.filter(OVERDUE.q(self.claim_model, now=now))

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
