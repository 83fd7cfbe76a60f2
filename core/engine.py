"""The claim engine: the one lifecycle of every claim (a car reservation, a seat hold group, a slot
booking). A domain subclasses ``ClaimEngine[its claim model]`` and declares only what is its own:

- ``model`` (a ``Claim``), ``domain`` (the metrics label) and ``policy`` (who may do what, in Python
  and as SQL: ``ClaimPolicy.sql``);
- for a hold that is one statement (``one_statement``, the car's and the seats'): ``decide``, that statement
  (docs/decisions/0022-one-statement-holds.md): its locks, the lazy expiry, the checks, the insert, the
  audit events; None when its snapshot may be stale under a lock it took (then ``hold_decided`` runs it
  again in a transaction);
- for a hold in a transaction (the slots'): ``lock_target`` (its rows, in the order of
  ``core.locking``), ``cap`` (the
  most one user may hold at once: a ``Cap``, its count under the owner's row lock), ``check_target``
  (its rules), ``expire_in_the_way`` (what must happen before ``create``, when that is more than one statement
  can do: nothing by default), and ``create``: the domain's one statement after the locks, composed once
  (``core.statements``) from its declarations — expire the overdue holds on the target, check
  the capacity and the cap, insert with the constraint as the backstop, write the audit events;
- for a transition, as SQL its statement is composed from: ``lock_before`` (the rows the order puts
  before the claim), ``reads``, ``fits`` (a check on the claim), ``allowed`` (a rule about the move),
  ``changes`` (columns beside the state), ``along`` (side effects: seat claims mirroring their group,
  counters, a gate before the write), ``audit_metadata``; in Python ``loaded``, ``disallowed``,
  ``refused`` (the errors), ``after`` (what needs the statement's transaction: a waiting-list offer).

The engine owns the rest, the same for all three:

    hold         one statement: decide in autocommit → (it could not decide) decide in a transaction
                 or lock_and_check: lock_target → locked_now → check_target → expire_in_the_way
                    create: the domain's statement
                 → booking_holds_created_total on commit
    transition   one statement, in autocommit (docs/decisions/0023-one-statement-transitions.md): lock
                 (before) → the claim (404) → the clock → the policy (403) → fits → an overdue hold is
                 expired and that commits (then 410 for a confirm, the domain's refusal otherwise) → or
                 allowed → the claim, its side effects and its audit events; in a transaction only when
                 ``Along.holds`` says the side effects need one (then ``after``)
    expire_due   the beat job: one statement per batch of overdue rows locked with SKIP LOCKED, in
                 autocommit; safe twice at once
    expire_overdue  the same statement for given ids, under the caller's resource lock

Every statement is composed once per process (ADR 0007, ADR 0021) and prepared.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Field, Model, QuerySet
from django.utils import timezone
from psycopg import sql

from core import claims, locking, statements
from core.audit import services as audit
from core.claims import EXPIRED, Claim, Rows, column
from core.errors import DomainError, Forbidden, HoldExpired, LimitReached, NotFound, NotOwner
from core.expiry import locked_now
from core.metrics import HOLDS_CREATED, HOLDS_EXPIRED, count_on_commit
from core.middleware import current_request_id
from core.statements import P, table
from web.accounts.models import User

EXPIRY_ACTOR = "system:expire_holds"  # the actor of every expiry nobody asked for

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


@dataclass(frozen=True)
class Along:
    """What a domain's transition writes beside its claims, in the same statement: named sub-statements
    (``ctes``) reading ``moved`` (the claims written: their columns, and ``from_state``) and ``target``
    (the claims the statement decided about), and what the statement returns of them (``returns``: SQL
    for the last columns of its one row). ``gate``: sub-statements between the decision and the claims'
    ``UPDATE`` (locks the order puts after the claim, read before it is written), and ``holds``: the
    condition on a target row ``t`` under which the claim is written only in a transaction (its side
    effect needs one: a waiting-list offer); ``%(in_transaction)s`` says whether the statement runs in
    one."""

    ctes: tuple[tuple[str, sql.Composable], ...] = ()
    returns: tuple[sql.Composable, ...] = ()  # a transition's
    batch_returns: tuple[sql.Composable, ...] = ()  # an expiry's
    gate: tuple[tuple[str, sql.Composable], ...] = ()
    holds: sql.Composable = field(default_factory=lambda: sql.SQL("false"))


NOTHING_ALONG = Along()


@dataclass
class Outcome(Generic[ClaimT]):
    """What a transition's statement says: the claim (as written, or as it was when nothing was), whether
    the actor may (``may``), the domain's check on it (``fits``), whether the domain's rule allowed the
    move (``allowed``), the time it was judged at, the state written (None:
    nothing), how many claims waited for a transaction (``deferred``) and the domain's ``returns``."""

    claim: ClaimT
    may: bool
    fits: bool
    allowed: bool
    now: datetime
    written: str | None
    deferred: int
    returns: tuple


class ClaimEngine(Generic[ClaimT]):
    model: type[ClaimT]
    domain: str
    policy: ClaimPolicy[ClaimT] = ClaimPolicy()
    cap: Cap | None = None  # the most one user may hold at once (checked by the domain's create)
    one_statement = False  # the hold is ``decide``: one statement in autocommit where it can decide

    # --- what a domain declares -------------------------------------------------------------------

    def lock_target(self, ask) -> Any:
        """Lock the rows the hold is about, in the global order; raise NotFound when they are missing."""
        raise NotImplementedError

    def check_target(self, target, ask, *, now: datetime) -> None:
        """The domain's rules about the target (a car out of service, sales closed, a guest's limits)."""

    def expire_in_the_way(self, target, ask, *, now: datetime) -> None:
        """What must happen on the locked target before ``create`` that its statement cannot do (an
        appointment's overdue holds on other slots); nothing by default: ``create`` expires the overdue
        holds on the target itself (they never block: docs/contract.md §2.2)."""

    def decide(self, ask, *, now: datetime, actor) -> ClaimT | None:
        """The hold as one statement, for a domain whose hold is ``one_statement``: its locks taken by
        ``locking.claim_lock_sql``, the lazy expiry, the checks, the insert, the audit events; raises the
        refusal. None when its snapshot's reads under a lock may be stale (``locking.fresh_sql``): it
        then wrote nothing."""
        raise NotImplementedError

    def create(self, target, ask, *, now: datetime, actor) -> ClaimT:
        """The domain's one statement after the locks: expire the overdue holds on the target, check its
        capacity and the cap, insert the claim (the constraint is the backstop), record the audit events."""
        raise NotImplementedError

    # What a transition's statement is made of (composed once per action and state: ``_transition_statement``).
    # Each is SQL over the claim's locked row ``l`` (its columns by name, ``reads`` by theirs, ``locked_at``:
    # the time judged by) or, for ``changes``, the target row ``t``; parameters by name.

    def lock_before(self, action: str) -> sql.Composable:
        """Conditions on the claim row ``c`` that lock the rows the global order puts before it (its guest,
        its slot): ``AND EXISTS (… FOR NO KEY UPDATE)``, held before the claim's own lock. None by default."""
        return sql.SQL("")

    def lock_seams(self) -> tuple:
        """The seams of the domain's ``locks.py`` its statements are made of (``lock_before``'s, ``along``'s),
        read off the module at each call: the statements are cached by them (``_seams``). None by default."""
        return ()

    def reads(self) -> dict[str, sql.Composable]:
        """What the lock statement reads beside the claim's columns, over ``c`` (what the policy or a rule
        reads of another row: a booking's slot's host). Set on the claim by ``loaded``."""
        return {}

    def loaded(self, claim: ClaimT, reads: dict[str, Any], returns: tuple) -> None:
        """Put what a transition's statement read (``reads``) and returned (``Along.returns``) on its claim."""

    def fits(self) -> sql.Composable:
        """The domain's check on the locked claim (it belongs to the event the request names): when false
        nothing is written, and ``transition``'s ``check`` raises the refusal."""
        return sql.SQL("true")

    def allowed(self, to_state: str) -> sql.Composable:
        """The domain's rule about an allowed transition (a cancellation window): when false nothing is
        written, and ``disallowed`` raises the refusal."""
        return sql.SQL("true")

    def disallowed(self, claim: ClaimT, to_state: str, *, now: datetime) -> DomainError:
        """The refusal when ``allowed`` is false."""
        raise NotImplementedError

    def changes(self, to_state: str) -> dict[str, sql.Composable]:
        """Columns a transition to ``to_state`` writes beside the state and ``updated_at``, over ``t``."""
        return {}

    def along(self, to_state: str) -> Along:
        """What a transition to ``to_state`` writes beside the claims (seat claims mirroring their group,
        counters), in its statement."""
        return NOTHING_ALONG

    def audit_subject(self, claim: ClaimT):
        return claim

    def audit_metadata(self) -> sql.Composable:
        """An audit event's metadata (``jsonb``) over the written claim ``m``; a request's own (a reason) is
        added to it."""
        return sql.SQL("'{}'::jsonb")

    def after(self, outcome: Outcome[ClaimT], *, now: datetime) -> None:
        """What a transition's statement leaves to its transaction (a waiting-list offer): called when it
        ran in one."""

    def refused(self, claim: ClaimT, to_state: str) -> DomainError:
        """The error when the state machine does not allow ``claim`` to become ``to_state``."""
        raise NotImplementedError

    def due_lock(self) -> tuple[sql.Composable, sql.Composable]:
        """What the expiry job's batch joins to the claim ``c`` and locks with it (a booking's slot, whose
        counter it moves): (the join, the tables' aliases beside ``c``)."""
        return sql.SQL(""), sql.SQL("")

    @property
    def subject_type(self) -> str:
        return audit.subject_key(self.audit_subject(self.model(pk=0)))[0]  # type: ignore[call-arg]  # a Model

    # --- hold -------------------------------------------------------------------------------------

    def hold(self, ask, *, now: datetime, actor) -> ClaimT:
        """Create a claim: lock → check → expire the overdue holds on the target → check free → insert →
        audit → metrics. ``ask`` is the domain's own description of what is asked. A domain whose
        hold is ``one_statement`` runs ``decide`` (``hold_decided``); the others, in a transaction, ``lock_and_check``
        (their lock statement and checks) and then ``create``."""
        if self.one_statement:
            claim = self.hold_decided(ask, now=now, actor=actor)
        else:
            with transaction.atomic():
                target, now = self.lock_and_check(ask, now=now)
                claim = self.create(target, ask, now=now, actor=actor)
        if claim.current_state == self.model.HELD:
            count_on_commit(HOLDS_CREATED, self.domain)
        return claim

    def hold_decided(self, ask, *, now: datetime, actor) -> ClaimT:
        """``decide`` in autocommit: one statement, no BEGIN or COMMIT. When it cannot decide (a claim
        committed under one of its locks after its snapshot), in a transaction: ``decide`` again, whose
        locks are then held to the COMMIT; if yet another claim committed under them between the two
        statements, once more, and that statement's snapshot is taken under the locks, so it decides
        (docs/decisions/0022-one-statement-holds.md). In a caller's transaction, straight to the second."""
        if not connection.in_atomic_block:
            claim = self.decide(ask, now=locked_now(now), actor=actor)
            if claim is not None:
                return claim
        with transaction.atomic():
            for _ in range(2):
                claim = self.decide(ask, now=locked_now(now), actor=actor)
                if claim is not None:
                    return claim
        raise RuntimeError(f"A {self.domain} hold could not decide under its own locks.")

    def lock_and_check(self, ask, *, now: datetime) -> tuple[Any, datetime]:
        """Lock the target, judge by the clock after the lock, and make sure it is free. Returns the
        target and that time."""
        target = self.lock_target(ask)
        now = locked_now(now)
        self.check_target(target, ask, now=now)
        self.expire_in_the_way(target, ask, now=now)
        return target, now

    # --- transitions ------------------------------------------------------------------------------

    def transition(
        self,
        *,
        claim_id: Any,
        what: str,
        to_state: str,
        action: str,
        user,
        now: datetime,
        by: str = "pk",
        check: Callable[[ClaimT], None] | None = None,
        metadata: dict | None = None,
        params: dict | None = None,
    ) -> ClaimT:
        """Move the claim whose ``by`` is ``claim_id`` (``what``: its name in messages) to ``to_state`` for
        ``user``: one statement (``_transition_statement``), in autocommit when called outside a
        transaction. It locks the rows the global order puts before the claim (``lock_before``), then the
        claim; judges by the clock once they are held; asks the policy (403), the domain's check (``fits``;
        ``check`` raises its refusal), whether the hold is overdue; writes the claim, its side effects
        (``along``) and its audit events. ``params``: the domain's own parameters of the statement.

        An overdue hold is expired instead, and stays expired: that change commits even though the request
        is then refused (410 for a confirm, the domain's refusal otherwise). When the side effects need a
        transaction (``Along.holds``: seats freed while people wait are offered to them), the statement
        writes nothing in autocommit and runs again in one, followed by ``after``.
        """
        statement = _transition_statement(self, action, to_state, by, _seams(self))
        values = {
            "claim": claim_id,
            "now": now,
            "user": user.pk,
            "staff": user.is_staff,
            "actor": user.pk,
            "actor_label": f"user:{user.pk}",
            "metadata": json.dumps(metadata or {}, cls=DjangoJSONEncoder),
            **self._event_params(),
            **(params or {}),
        }
        outcome = self._run(statement, values)
        if outcome is None:
            raise NotFound(f"{what} does not exist.")
        claim = outcome.claim
        if not outcome.may:
            raise self.policy.refusal(action, what=what)
        if not outcome.fits:
            assert check is not None  # a domain whose statement checks more has the check that refuses
            check(claim)
        if outcome.written == to_state:
            if to_state == EXPIRED:
                count_on_commit(HOLDS_EXPIRED, self.domain)
            return claim
        if outcome.written == EXPIRED:  # the hold was overdue: expired instead, and that committed
            count_on_commit(HOLDS_EXPIRED, self.domain)
        elif claim.can_become(to_state) and not outcome.allowed:
            raise self.disallowed(claim, to_state, now=outcome.now)
        if to_state == self.model.CONFIRMED and claim.current_state == EXPIRED:
            assert claim.expires_at is not None  # it was a hold, and a hold has an expiry
            raise HoldExpired(f"{what} expired at {claim.expires_at.isoformat()}.")
        raise self.refused(claim, to_state)

    def _event_params(self) -> dict[str, Any]:
        return {"expiry_actor": EXPIRY_ACTOR, "occurred_at": timezone.now(), "trace_id": current_request_id() or ""}

    def _run(self, statement: _TransitionStatement, values: dict) -> Outcome[ClaimT] | None:
        """Run a transition's statement in autocommit (a savepoint inside a caller's transaction), or, when
        it deferred its claim to a transaction, again in one, and ``after``."""
        if not connection.in_atomic_block:
            outcome = statement.run(self, {**values, "in_transaction": False})
            if outcome is None or not outcome.deferred:
                return outcome
        # A savepoint in a caller's transaction: a statement that fails leaves that transaction usable.
        with transaction.atomic():
            outcome = statement.run(self, {**values, "in_transaction": True})
            if outcome is not None and outcome.written:
                self.after(outcome, now=outcome.now)
            return outcome

    # --- expiry -----------------------------------------------------------------------------------

    def expire_overdue(self, ids: Sequence[Any], *, now: datetime) -> int:
        """Expire the holds among ``ids`` that are overdue at ``now``, one statement (``_expiry_statement``).
        Caller holds the lock of the resource they are on; their own rows are locked here (after it), so a
        confirm that got there first is seen and skipped. Returns how many were expired."""
        if not ids:
            return 0
        _, expired, *_ = _expiry_statement(self, False, _seams(self)).fetchone(
            {"ids": list(ids), "now": now, "in_transaction": connection.in_atomic_block, **self._expiry_params()}
        )
        count_on_commit(HOLDS_EXPIRED, self.domain, amount=expired)
        return expired

    def expire_due(self, *, now: datetime, batch_size: int | None = None) -> int:
        """Flip every hold overdue at ``now`` to EXPIRED, one audit event each (the beat job): one statement
        per batch, in autocommit — lock up to ``batch_size`` overdue rows with SKIP LOCKED, write them, their
        side effects and their audit events — repeated until a batch comes up short. Two runs at once share
        the rows instead of doing them twice; a row a request holds (or whose target it holds) is left to
        that request, and not fetched again in this run. A batch whose side effects need a transaction
        (``Along.holds``) runs again in one, followed by ``after``. Returns how many holds were expired."""
        batch_size = batch_size or settings.EXPIRY_BATCH_SIZE
        statement = _expiry_statement(self, True, _seams(self))
        total = 0
        while True:
            values = {"size": batch_size, "now": locked_now(now), **self._expiry_params()}
            fetched, expired, *returns = statement.fetchone({**values, "in_transaction": False})
            if fetched > expired:  # some waited for a transaction: this batch again, in one
                with transaction.atomic():
                    fetched, again, *returns = statement.fetchone({**values, "in_transaction": True})
                    expired += again
                    self.after_expiry(returns, now=values["now"])
            count_on_commit(HOLDS_EXPIRED, self.domain, amount=expired)
            total += expired
            if fetched < batch_size:
                return total

    def after_expiry(self, returns: list, *, now: datetime) -> None:
        """``after`` for an expiry statement run in a transaction (``returns``: its domain's columns)."""

    def _expiry_params(self) -> dict[str, Any]:
        return {"actor": None, "actor_label": EXPIRY_ACTOR, "metadata": "{}", **self._event_params()}


# --- the statements -------------------------------------------------------------------------------


def _claim_columns(model: type[Model]) -> list[Field]:
    return list(model._meta.concrete_fields)


def _names(alias: str, fields: Sequence[Field]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, cast(str, f.column)) for f in fields)


def _written(engine: ClaimEngine, to_state: str) -> sql.Composed:
    """The claims' ``UPDATE`` (``moved``: each claim of ``target`` with a ``to_state``, but those
    ``along.holds`` keeps for a transaction), the domain's side effects and the audit events, as the
    sub-statements after ``target`` and the gate. The ``UPDATE`` reads its decision from ``target``: it
    holds the claims' locks, and a locked row is read at its newest version."""
    model, along = engine.model, engine.along(to_state)
    fields = _claim_columns(model)
    to = sql.Literal(to_state)
    changes = [
        sql.SQL("{} = CASE WHEN t.to_state = {} THEN {} ELSE c.{} END").format(
            column(model, name), to, value, column(model, name)
        )
        for name, value in engine.changes(to_state).items()
    ]
    state = column(model, model.STATE_FIELD)
    written = sql.SQL("m.{}").format(state)
    by_request = sql.SQL("{} = {}").format(written, to)
    return sql.SQL("""{gate}moved AS (
    UPDATE {table} c SET {state} = t.to_state, {updated_at} = t.locked_at{changes}
    FROM target t
    WHERE c.{pk} = t.id AND t.to_state IS NOT NULL AND (%(in_transaction)s OR NOT ({holds}))
    RETURNING {returning}, t.from_state
){along}, recorded AS ({recorded}
)""").format(
        gate=sql.SQL("").join(sql.SQL("{} AS ({}), ").format(sql.Identifier(n), q) for n, q in along.gate),
        table=table(model),
        state=state,
        updated_at=column(model, "updated_at"),
        changes=sql.SQL("").join(sql.SQL(", {}").format(c) for c in changes),
        pk=column(model, model._meta.pk.name),
        holds=along.holds,
        returning=_names("c", fields),
        along=sql.SQL("").join(sql.SQL(", {} AS ({})").format(sql.Identifier(n), q) for n, q in along.ctes),
        recorded=statements.audit_rows(
            source=sql.SQL("moved m"),
            occurred_at=P("occurred_at"),
            actor=sql.SQL("CASE WHEN {} THEN %(actor)s::bigint END").format(by_request),
            actor_label=sql.SQL("CASE WHEN {} THEN %(actor_label)s ELSE %(expiry_actor)s END").format(by_request),
            subject_type=sql.Literal(engine.subject_type),
            subject_id=sql.SQL("m.id::text"),
            event_type=written,
            from_state=sql.SQL("m.from_state"),
            to_state=written,
            metadata=sql.SQL("CASE WHEN {} THEN {} || %(metadata)s::jsonb ELSE {} END").format(
                by_request, engine.audit_metadata(), engine.audit_metadata()
            ),
            request_id=P("trace_id"),
        ),
    )


class _TransitionStatement(statements.Statement):
    """One transition's statement and how its row reads: the claim before (``l``: its columns, the
    domain's reads, the time judged by, the verdicts), the claim as written (``m``; NULLs when nothing
    was), how many claims waited for a transaction, the domain's returns. No row: no such claim."""

    def __init__(self, composed: sql.Composable, model: type[Claim], reads: Sequence[str]):
        super().__init__(composed)
        self.model, self.reads = model, list(reads)
        self.width = len(_claim_columns(model))  # type: ignore[arg-type]  # a Claim is a Model

    def run(self, engine: ClaimEngine, params: dict) -> Outcome | None:
        rows = self.fetchall(params)
        if not rows:
            return None
        n, r = self.width, len(self.reads)
        row = rows[0]
        before, reads, (now, may, fits, allowed, deferred) = row[:n], row[n : n + r], row[n + r : n + r + 5]
        after, returns = row[n + r + 5 : 2 * n + r + 5], row[2 * n + r + 5 :]
        written = after[0] is not None
        claim = statements.from_row(self.model, after if written else before)  # type: ignore[arg-type]  # a Model
        engine.loaded(claim, dict(zip(self.reads, reads, strict=True)), tuple(returns))
        return Outcome(
            claim=claim,
            may=may,
            fits=fits,
            allowed=allowed,
            now=now,
            written=claim.current_state if written else None,
            deferred=deferred,
            returns=tuple(returns),
        )


def _seams(engine: ClaimEngine) -> tuple:
    """The lock seams a statement of ``engine`` is composed with: ``core.locking``'s and its domain's
    (``ClaimEngine.lock_seams``). A race control replaces one; the statements are cached by them, so it
    gets a statement composed with its replacement."""
    return (locking.transition_lock_sql, locking.user_lock_sql, *engine.lock_seams())


@functools.cache
def _transition_statement(
    engine: ClaimEngine, action: str, to_state: str, by: str, seams: tuple
) -> _TransitionStatement:
    """``engine``'s transition of one claim (by its field ``by``) to ``to_state`` for ``action``, composed
    once per (engine, action, state, key, ``_seams``). ``locked`` takes the locks (the earlier kinds as its
    conditions, ``lock_before``, then the
    claim: READ COMMITTED returns the row's newest version once the lock is held); ``judged`` reads the
    clock after them; ``decided`` asks the policy, the domain's check, whether the hold is overdue and the
    domain's rule; ``target`` is the state to write (EXPIRED for an overdue hold), or none."""
    model = engine.model
    fields = _claim_columns(model)
    state = column(model, model.STATE_FIELD, "l")
    reads = engine.reads()
    from_states = [s for s, targets in model.TRANSITIONS.items() if to_state in targets]
    composed = sql.SQL("""
WITH locked AS MATERIALIZED (
    SELECT {columns}{reads} FROM {table} c WHERE c.{key} = %(claim)s {before} {lock}
), judged AS MATERIALIZED (
    SELECT l.*, GREATEST(%(now)s, clock_timestamp()) AS locked_at FROM locked l
), decided AS MATERIALIZED (
    SELECT l.*, {may} AS may, {fits} AS fits, {overdue} AS overdue, {allowed} AS allowed FROM judged l
), target AS (
    SELECT l.*, {state} AS from_state,
           CASE WHEN NOT (l.may AND l.fits) THEN NULL
                WHEN l.overdue THEN {expired}
                WHEN {state} IN ({from_states}) AND l.allowed THEN {to} END AS to_state
    FROM decided l
), {written}
SELECT {before_columns}{read_names}, l.locked_at, l.may, l.fits, l.allowed,
       (SELECT count(*) FROM target WHERE to_state IS NOT NULL) - (SELECT count(*) FROM moved),
       {after_columns}{returns}
FROM decided l LEFT JOIN moved m ON true
""").format(
        columns=_names("c", fields),
        reads=sql.SQL("").join(sql.SQL(", {} AS {}").format(q, sql.Identifier(n)) for n, q in reads.items()),
        table=table(model),
        key=column(model, by if by != "pk" else model._meta.pk.name),
        before=engine.lock_before(action),
        lock=locking.transition_lock_sql(),
        may=engine.policy.sql(action),
        fits=engine.fits(),
        overdue=claims.OVERDUE.sql(model, "l", now=sql.SQL("l.locked_at")),
        allowed=engine.allowed(to_state),
        state=state,
        expired=sql.Literal(EXPIRED),
        from_states=sql.SQL(", ").join(map(sql.Literal, from_states)) if from_states else sql.NULL,
        to=sql.Literal(to_state),
        written=_written(engine, to_state),
        before_columns=_names("l", fields),
        read_names=sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier("l", n)) for n in reads),
        after_columns=_names("m", fields),
        returns=sql.SQL("").join(sql.SQL(", {}").format(r) for r in engine.along(to_state).returns),
    )
    return _TransitionStatement(composed, model, list(reads))


@functools.cache
def _expiry_statement(engine: ClaimEngine, batch: bool, seams: tuple) -> statements.Statement:
    """``engine``'s expiry of overdue holds, composed once (per ``_seams``): ``batch``, the expiry job's (up
    to ``%(size)s`` overdue rows, the longest overdue first, locked with SKIP LOCKED with the rows
    ``due_lock`` joins: it never waits);
    else those among ``%(ids)s`` (waiting for their locks: the caller holds their resource's). Returns how
    many rows it locked, how many it expired and the domain's returns."""
    model = engine.model
    join, locked_too = engine.due_lock() if batch else (sql.SQL(""), sql.SQL(""))
    composed = sql.SQL("""
WITH target AS MATERIALIZED (
    SELECT {columns}, {state} AS from_state, {expired} AS to_state, %(now)s::timestamptz AS locked_at
    FROM {table} c {join}
    WHERE {overdue} {among}
    ORDER BY c.{order} {limit} FOR NO KEY UPDATE OF c{locked_too} {skip}
), {written}
SELECT (SELECT count(*) FROM target), (SELECT count(*) FROM moved){returns}
""").format(
        columns=_names("c", _claim_columns(model)),
        state=column(model, model.STATE_FIELD, "c"),
        expired=sql.Literal(EXPIRED),
        table=table(model),
        join=join,
        overdue=claims.OVERDUE.sql(model, "c"),
        among=sql.SQL("") if batch else sql.SQL("AND c.{} = ANY(%(ids)s)").format(column(model, model._meta.pk.name)),
        # A batch never waits (SKIP LOCKED): it takes the first overdue rows on the held-expiry index
        # (``reservation_held_expiry_idx`` and its kin), a read of the batch's own rows, not of every row
        # expired before it. Given ids wait for their locks: in id order (ADR 0001).
        order=column(model, "expires_at" if batch else model._meta.pk.name),
        limit=sql.SQL("LIMIT %(size)s") if batch else sql.SQL(""),
        locked_too=locked_too,
        skip=sql.SQL("SKIP LOCKED") if batch else sql.SQL(""),
        written=_written(engine, EXPIRED),
        returns=sql.SQL("").join(sql.SQL(", {}").format(r) for r in engine.along(EXPIRED).batch_returns),
    )
    return statements.Statement(composed)
