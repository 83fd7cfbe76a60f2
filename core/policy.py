"""Who may do what with a domain's claims (``ClaimPolicy``) and how much one user may hold at once
(``Cap``): the rules every ``core.engine.ClaimEngine`` is declared with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from django.conf import settings
from django.db.models import Field, Model, Q, QuerySet
from psycopg import sql

from core import locking
from core.claims import Claim, Rows, column
from core.errors import DomainError, Forbidden, LimitReached, NotFound, NotOwner
from core.organisations import access
from core.organisations.roles import Role, at_least
from core.statements import table

if TYPE_CHECKING:  # the user model, settings.AUTH_USER_MODEL, as django-stubs resolves it: the core imports no app's
    from django.contrib.auth.models import _User as User

# The actions a policy is asked about.
SEE, CONFIRM, CANCEL, RELEASE, EXPIRE, RESCHEDULE = "see", "confirm", "cancel", "release", "expire", "reschedule"

ClaimT = TypeVar("ClaimT", bound=Claim)  # one domain's claim model


class ClaimPolicy(Generic[ClaimT]):
    """Who may do what with one domain's claims (docs/contract.md §2.6): the owner acts on their own claims;
    the members of the organisation of what a claim is on (its car's, event's, slot's) act on every claim
    there, as far as ``role`` allows (``core.organisations.roles``); a superuser on every claim. Expiring
    a hold now is the operators' alone. Another organisation's claim is 404 to an operator (its existence
    is not revealed), someone else's claim 403 ``not_owner`` to anyone else. A domain with more parties (a
    slot's host) subclasses it. The domain's rows that are not claims but belong to one user (a
    waiting-list entry, a queue entry, a host's slot) follow the same rule: ``owns``, ``require_owner``.

    The same rule is SQL for a transition's statement (``sql``): the caller's organisations for ``role``
    are one array parameter read with the caller (``core.organisations.access``), and the membership is
    confirmed under its lock in the statement (``core.locking.member_lock_sql``), so a member removed
    while acting is either refused or done before the removal commits."""

    owner_field = "user"  # the claim's foreign key to its owner
    resource_field: str  # the claim's foreign key to what it is on, whose ``organisation`` it belongs to
    role = Role.STAFF  # the role acting on someone else's claims needs
    operator_only = frozenset({EXPIRE})

    def owner_id(self, claim: ClaimT) -> int:
        return getattr(claim, f"{self.owner_field}_id")

    def organisation_id(self, claim: ClaimT) -> int:
        return getattr(claim, self.resource_field).organisation_id

    def owns(self, user: User, owner_id: int, organisation: Callable[[], int | None], role: Role | None = None) -> bool:
        """Whether ``user`` may act on what belongs to ``owner_id`` in the organisation ``organisation``
        reads (only when ``user`` is not the owner): the owner, or an operator there with ``role``
        (``self.role`` unless said)."""
        if owner_id == user.pk:
            return True
        organisation_id = organisation()
        return organisation_id is not None and access.may_act(user, organisation_id, role or self.role)

    def may(self, user: User, action: str, claim: ClaimT) -> bool:
        if action in self.operator_only:
            return access.may_act(user, self.organisation_id(claim), self.role)
        return self.owner_id(claim) == user.pk or access.may_act(user, self.organisation_id(claim), self.role)

    def require(self, user: User, action: str, claim: ClaimT, *, what: str) -> None:
        if not self.may(user, action, claim):
            raise self.refusal(action, what=what, user=user, owner_id=self.owner_id(claim))

    def refusal(self, action: str, *, what: str, user: User, owner_id: int) -> DomainError:
        """The error of a user ``may`` refuses ``action`` on ``what`` (owned by ``owner_id``): an operator
        asking about another organisation's claim gets 404."""
        if access.is_operator(user) and (action in self.operator_only or owner_id != user.pk):
            return NotFound(f"{what} does not exist.")
        if action in self.operator_only:
            return Forbidden(f"Only operators may {action} {what}.")
        return NotOwner(f"{what} belongs to another user.")

    def organisation_sql(self, model: type[Model]) -> sql.Composable:
        """The organisation of the claim ``c`` of ``model``, read by a transition's lock statement (its
        resource's row, by primary key)."""
        resource = cast(Field, model._meta.get_field(self.resource_field)).related_model
        assert resource is not None and not isinstance(resource, str)  # a foreign key to a model
        return sql.SQL("(SELECT {} FROM {} r WHERE r.{} = {})").format(
            column(resource, "organisation", "r"),
            table(resource),
            column(resource, resource._meta.pk.name),
            column(model, self.resource_field, "c"),
        )

    def operator_sql(self) -> sql.Composable:
        """Whether the caller ``%(user)s`` operates where the locked claim ``l`` is (``l.organisation``): a
        superuser (``%(superuser)s``), or a member there with ``role`` (``%(organisations)s``, read with the
        caller), their membership confirmed under its lock (``locking.member_lock_sql``, a seam)."""
        return sql.SQL("(%(superuser)s OR (l.organisation = ANY(%(organisations)s) AND {}))").format(
            locking.member_lock_sql(sql.SQL("l.organisation"))
        )

    def sql(self, action: str) -> sql.Composable:
        """``may`` as SQL over a transition's locked claim ``l``, for the caller ``%(user)s``
        (``params``)."""
        if action in self.operator_only:
            return self.operator_sql()
        return sql.SQL("({} = %(user)s OR {})").format(
            sql.Identifier("l", f"{self.owner_field}_id"), self.operator_sql()
        )

    def params(self, user: User) -> dict[str, Any]:
        """The caller's parameters of ``sql``: read once per request, with the user."""
        return {
            "user": user.pk,
            "superuser": user.is_superuser,
            "organisations": access.organisation_ids(user, self.role),
            "roles": at_least(self.role),
        }

    def require_owner(
        self, user: User, owner_id: int, organisation: Callable[[], int | None], *, what: str, role: Role | None = None
    ) -> None:
        """Refuse ``user`` ``what``, a row that belongs to ``owner_id`` in the organisation ``organisation``
        reads, unless ``owns`` allows it (with ``role``): 404 to an operator of other organisations, 403
        ``role_required`` to a member of its own with a lower role (``access.require``)."""
        if not self.owns(user, owner_id, organisation, role):
            if access.is_operator(user):
                organisation_id = organisation()
                if organisation_id is not None:
                    access.require(user, organisation_id, role or self.role, what=what)
                raise NotFound(f"{what} does not exist.")
            raise NotOwner(f"{what} belongs to another user.")

    def require_member(
        self, user: User, owner_id: int, organisation: Callable[[], int], *, what: str, role: Role | None = None
    ) -> None:
        """After ``require`` or ``require_owner``, in a service's transaction: an operator acting on what
        belongs to ``owner_id`` has their membership in the organisation ``organisation`` reads confirmed
        under its lock (``access.require_member``, last in the order), as ``operator_sql`` does in a
        statement; the owner acts on their own (nothing more is read)."""
        if owner_id != user.pk:
            access.require_member(user, organisation(), role or self.role, what=what)

    def visible(self, claims: QuerySet, user: User) -> QuerySet:
        """The claims ``user`` may see: their own, and those of the organisations they operate in; a
        superuser all."""
        if user.is_superuser:
            return claims
        organisations = access.organisation_ids(user, self.role)
        if not organisations:
            return claims.filter(**{self.owner_field: user})
        return claims.filter(
            Q(**{self.owner_field: user}) | Q(**{f"{self.resource_field}__organisation__in": organisations})
        )


@dataclass(frozen=True)
class Cap:
    """The most one user may hold at once in a domain (docs/contract.md §2.7; OWASP API6: one account
    hoarding a scarce thing). The limit is the setting ``setting``; a request over it is refused with
    409 ``limit_reached``, ``details.rule`` = ``rule`` and ``details.limit``.

    The count is read under the owner's user row lock (``locking.user_lock_sql``, order 1), in a statement
    after the one that takes it — or, in a one-statement hold, in the statement that takes it by
    ``locking.claim_lock_sql``, trusted only when no claim committed under that lock after its snapshot
    (``locking.fresh_sql``, docs/decisions/0022-one-statement-holds.md) — so two holds of one user at
    once cannot both pass a count of one below the limit. An operator's request inside their organisation
    (the actor a member of the organisation of what is held, for themselves or for someone else; a
    superuser anywhere) is exempt unless ``operators_exempt`` is off: then it takes no lock for the cap
    either. Outside it, an operator is held to the limit like anyone."""

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

    def limit_for(self, actor: User, organisation_id: int | None) -> int | None:
        """The limit a claim ``actor`` asks for on a resource of ``organisation_id`` is held to; None when
        the cap does not apply to them (``ClaimEngine.acting_organisation`` gives the organisation)."""
        return None if self.operators_exempt and access.acts_in(actor, organisation_id) else self.limit

    def locked_owner(self, owner_id: int, actor: User, organisation_id: int | None) -> int | None:
        """The user whose row lock the count needs (``owner``: a lock function takes it first, by its
        hold's lock statement, or its one statement); None when the cap does not apply, nothing to
        serialize."""
        return owner_id if self.limit_for(actor, organisation_id) is not None else None

    def counted(self, model: type[Claim], alias: str = "") -> sql.Composable:
        """The condition on ``model``'s rows (aliased ``alias``) that the limit counts, for a statement."""
        return self.counts.sql(model, alias)

    def describe(self) -> str:
        """The cap in words, as the admin's claim lists state it to operators: the rule, what it counts, who
        is exempt."""
        exempt = (
            "Operators are exempt inside their organisation."
            if self.operators_exempt
            else "Operators acting for a user are held to it too."
        )
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
