"""Who may do what with a domain's claims (``ClaimPolicy``) and how much one user may hold at once
(``Cap``): the rules every ``core.engine.ClaimEngine`` is declared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db.models import QuerySet
from psycopg import sql

from core.claims import Claim, Rows
from core.errors import DomainError, Forbidden, LimitReached, NotOwner
from web.accounts.models import User

# The actions a policy is asked about.
SEE, CONFIRM, CANCEL, RELEASE, EXPIRE, RESCHEDULE = "see", "confirm", "cancel", "release", "expire", "reschedule"

ClaimT = TypeVar("ClaimT", bound=Claim)  # one domain's claim model


class ClaimPolicy(Generic[ClaimT]):
    """Who may do what with one domain's claims (docs/contract.md §2.6): the owner acts on their own claims, an
    operator (staff) on everyone's; expiring a hold now is the operator's alone. A domain with more
    parties (a slot's host) subclasses it. The domain's rows that are not claims but belong to one user
    (a waiting-list entry, a queue entry, a host's slot) follow the same rule: ``owns``, ``require_owner``."""

    owner_field = "user"  # the claim's foreign key to its owner
    operator_only = frozenset({EXPIRE})

    def owner_id(self, claim: ClaimT) -> int:
        return getattr(claim, f"{self.owner_field}_id")

    def owns(self, user: User, owner_id: int) -> bool:
        """Whether ``user`` may act on what belongs to ``owner_id``: the owner, or an operator."""
        return user.is_staff or owner_id == user.pk

    def may(self, user: User, action: str, claim: ClaimT) -> bool:
        if action in self.operator_only:
            return user.is_staff
        return self.owns(user, self.owner_id(claim))

    def require(self, user: User, action: str, claim: ClaimT, *, what: str) -> None:
        if not self.may(user, action, claim):
            raise self.refusal(action, what=what)

    def refusal(self, action: str, *, what: str) -> DomainError:
        """The error of a user ``may`` refuses ``action`` on ``what``."""
        if action in self.operator_only:
            return Forbidden(f"Only operators may {action} {what}.")
        return NotOwner(f"{what} belongs to another user.")

    def sql(self, action: str) -> sql.Composable:
        """``may`` as SQL over a transition's locked claim ``l``, for the user ``%(user)s`` (staff:
        ``%(staff)s``)."""
        if action in self.operator_only:
            return sql.SQL("%(staff)s")
        return sql.SQL("(%(staff)s OR {} = %(user)s)").format(sql.Identifier("l", f"{self.owner_field}_id"))

    def require_owner(self, user: User, owner_id: int, *, what: str, owner: str = "user") -> None:
        """Refuse ``user`` ``what``, a row that belongs to ``owner_id`` (its ``owner``: a user, a host), unless
        ``owns`` allows it."""
        if not self.owns(user, owner_id):
            raise NotOwner(f"{what} belongs to another {owner}.")

    def visible(self, claims: QuerySet, user: User) -> QuerySet:
        """The claims ``user`` may see: their own; an operator all."""
        return claims if user.is_staff else claims.filter(**{self.owner_field: user})


@dataclass(frozen=True)
class Cap:
    """The most one user may hold at once in a domain (docs/contract.md §2.7; OWASP API6: one account
    hoarding a scarce thing). The limit is the setting ``setting``; a request over it is refused with
    409 ``limit_reached``, ``details.rule`` = ``rule`` and ``details.limit``.

    The count is read under the owner's user row lock (``locking.user_lock_sql``, order 1), in a statement
    after the one that takes it — or, in a one-statement hold, in the statement that takes it by
    ``locking.claim_lock_sql``, trusted only when no claim committed under that lock after its snapshot
    (``locking.fresh_sql``, docs/decisions/0022-one-statement-holds.md) — so two holds of one user at
    once cannot both pass a count of one below the limit. An operator's request (the actor is staff, for
    themselves or for someone else) is exempt unless ``operators_exempt`` is off: then it takes no lock
    for the cap either."""

    rule: str
    setting: str
    message: str  # formatted with count (held now), asked (this request) and limit
    summary: str  # the rule for operators, formatted with limit (the admin's claim lists show it)
    # Which of the owner's claims count against the limit: the one declaration the hold's statement
    # (``counted``), the admin's text (``describe``) and the refusal (``check``) all read.
    counts: Rows
    operators_exempt: bool = True

    @property
    def limit(self) -> int:
        return getattr(settings, self.setting)

    def limit_for(self, actor: User) -> int | None:
        """The limit a claim ``actor`` asks for is held to; None when the cap does not apply to them."""
        return None if self.operators_exempt and actor.is_staff else self.limit

    def locked_owner(self, owner_id: int, actor: User) -> int | None:
        """The user whose row lock the count needs (``owner``: a lock function takes it first, by its
        hold's lock statement, or its one statement); None when the cap does not apply, nothing to
        serialize."""
        return owner_id if self.limit_for(actor) is not None else None

    def counted(self, model: type[Claim], alias: str = "") -> sql.Composable:
        """The condition on ``model``'s rows (aliased ``alias``) that the limit counts, for a statement."""
        return self.counts.sql(model, alias)

    def describe(self) -> str:
        """The cap in words, as the admin's claim lists state it to operators: the rule, what it counts, who
        is exempt."""
        exempt = "Operators are exempt." if self.operators_exempt else "Operators acting for a user are held to it too."
        return f"{self.summary.format(limit=self.limit)} It counts {self.counts.words}. {exempt}"

    def help_text(self) -> str:
        """How the cap is set and how the API refuses past it: the help beside ``describe()``'s words."""
        return (
            f"The limit is the setting {self.setting}; past it the API refuses a hold with 409 limit_reached "
            f"(rule {self.rule})."
        )

    def check(self, *, count: int, asked: int, limit: int | None, **details: Any) -> None:
        """Refuse when ``count`` held (read under the owner's lock) plus ``asked`` is over ``limit``."""
        if limit is not None and count + asked > limit:
            raise LimitReached(
                f"{self.message.format(count=count, asked=asked, limit=limit)} It counts {self.counts.words}.",
                details={"rule": self.rule, "limit": limit, **details},
            )
