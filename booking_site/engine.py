"""The claim engine: the one lifecycle of every claim (a car reservation, a seat hold group, a slot
booking). A domain subclasses ``ClaimEngine[its claim model]`` and declares only what is its own:

- ``model`` (a ``Claim``), ``domain`` (the metrics label) and ``policy`` (who may do what);
- for a hold that is one statement (``one_statement``, the car's): ``decide``, that statement
  (docs/decisions/0022-one-statement-holds.md): its locks, the lazy expiry, the checks, the insert, the
  audit events; None when its snapshot may be stale under a lock it took (then ``hold_decided`` runs it
  again in a transaction);
- for a hold in a transaction (the seats', the slots'): ``lock_target`` (its rows, in the order of
  ``booking_site.locking``), ``cap`` (the
  most one user may hold at once: a ``Cap``, its count under the owner's row lock), ``check_target``
  (its rules), ``make_free`` (what must happen before ``create``, when that is more than one statement
  can do: nothing by default), and ``create``: the domain's one statement after the locks, composed once
  (``booking_site.statements``) from its declarations — expire the overdue holds on the target, check
  the capacity and the cap, insert with the constraint as the backstop, write the audit events;
- for every transition: ``changes`` (columns beside the state), ``on_write`` (side effects: seat claims
  mirroring their group, counters), ``audit_subject`` / ``audit_metadata``, and ``refused`` (the error
  of a transition the state machine does not allow).

The engine owns the rest, the same for all three, each step a method:

    hold         one statement: decide in autocommit → (it could not decide) decide in a transaction
                 or take:   lock_target → locked_now → check_target → make_free
                    create: the domain's statement
                 → booking_holds_created_total on commit
    transition   (before) → lock the claim (404) → the policy (403) → check → locked_now → an overdue
                 hold is expired and that commits (then 410 for a confirm, the domain's refusal
                 otherwise) → or check_transition → changes → write
    write        one statement: the claims' UPDATE and their audit events' INSERT; then on_write;
                 booking_holds_expired_total on commit
    expire_due   the beat job: batches of overdue rows with SKIP LOCKED, safe twice at once

Every domain's ``create`` is one composed statement (ADR 0007, ADR 0021).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.models import Q, QuerySet
from django.db.models import sql as orm_sql
from psycopg import sql

from booking_site import locking
from booking_site.accounts.models import User
from booking_site.audit import services as audit
from booking_site.audit.models import AuditEvent
from booking_site.claims import EXPIRED, Claim, Rows
from booking_site.errors import DomainError, Forbidden, HoldExpired, LimitReached, NotFound, NotOwner
from booking_site.expiry import locked_now
from booking_site.metrics import HOLDS_CREATED, HOLDS_EXPIRED, count_on_commit

EXPIRY_ACTOR = "system:expire_holds"  # the actor of every expiry nobody asked for

# The actions a policy is asked about.
SEE, CONFIRM, CANCEL, RELEASE, EXPIRE, RESCHEDULE = "see", "confirm", "cancel", "release", "expire", "reschedule"

ClaimT = TypeVar("ClaimT", bound=Claim)  # one domain's claim model
Along = Sequence[tuple[str, Sequence[Any]]]  # write_along's sub-statements: (sql, params) each


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
        if self.may(user, action, claim):
            return
        if action in self.operator_only:
            raise Forbidden(f"Only operators may {action} {what}.")
        raise NotOwner(f"{what} belongs to another user.")

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

    The count is read under the owner's user row lock (``locking.user_lock``, order 1), in a statement
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


class ClaimEngine(Generic[ClaimT]):
    model: type[ClaimT]
    domain: str
    policy: ClaimPolicy[ClaimT] = ClaimPolicy()
    cap: Cap | None = None  # the most one user may hold at once (checked by the domain's create)
    one_statement = False  # the hold is ``decide``: one statement in autocommit where it can decide

    # --- what a domain declares -------------------------------------------------------------------

    def lock_target(self, request) -> Any:
        """Lock the rows the hold is about, in the global order; raise NotFound when they are missing."""
        raise NotImplementedError

    def check_target(self, target, request, *, now: datetime) -> None:
        """The domain's rules about the target (a car out of service, sales closed, a guest's limits)."""

    def make_free(self, target, request, *, now: datetime) -> None:
        """What must happen on the locked target before ``create`` that its statement cannot do (an
        appointment's overdue holds on other slots); nothing by default: ``create`` expires the overdue
        holds on the target itself (they never block: docs/contract.md §2.2)."""

    def decide(self, request, *, now: datetime, actor) -> ClaimT | None:
        """The hold as one statement, for a domain whose hold is ``one_statement``: its locks taken by
        ``locking.claim_lock_sql``, the lazy expiry, the checks, the insert, the audit events; raises the
        refusal. None when its snapshot's reads under a lock may be stale (``locking.fresh_sql``): it
        then wrote nothing."""
        raise NotImplementedError

    def create(self, target, request, *, now: datetime, actor) -> ClaimT:
        """The domain's one statement after the locks: expire the overdue holds on the target, check its
        capacity and the cap, insert the claim (the constraint is the backstop), record the audit events."""
        raise NotImplementedError

    def changes(self, claim: ClaimT, to_state: str, *, now: datetime, metadata: dict | None) -> dict:
        """Columns a transition writes beside the state and ``updated_at`` (one claim at a time)."""
        return {}

    def check_transition(self, claim: ClaimT, to_state: str, *, user, now: datetime) -> None:
        """The domain's rules about an allowed transition (a cancellation window)."""

    def on_write(self, claims: list[ClaimT], *, from_states: list[str], to_state: str, now: datetime) -> None:
        """Side effects of a transition, after its audit events (seat claims, counters)."""

    def write_along(self, claims: list[ClaimT], *, from_states: list[str], to_state: str, now: datetime) -> Along:
        """Side effects written by the transition's own statement, as more ``WITH`` sub-statements: a
        list of ``(sql, params)`` (a counter the claims move). They read nothing the claims' ``UPDATE``
        returns and run in no set order with it, so their rows are locked already (ADR 0001)."""
        return []

    def audit_subject(self, claim: ClaimT):
        return claim

    def audit_metadata(self, claim: ClaimT, metadata: dict | None) -> dict | None:
        return metadata

    def refused(self, claim: ClaimT, to_state: str) -> DomainError:
        """The error when the state machine does not allow ``claim`` to become ``to_state``."""
        raise NotImplementedError

    def due(self, *, now: datetime) -> QuerySet:
        """What the expiry job locks a batch of: the overdue holds (and the rows ``on_write`` moves)."""
        return self.model.objects.overdue(now=now)

    # --- hold -------------------------------------------------------------------------------------

    def hold(self, request, *, now: datetime, actor) -> ClaimT:
        """Create a claim: lock → check → expire the overdue holds on the target → check free → insert →
        audit → metrics. ``request`` is the domain's own description of what is asked. A domain whose
        hold is ``one_statement`` runs ``decide`` (``hold_decided``); the others, in a transaction, ``take``
        (their lock statement and checks) and then ``create``."""
        if self.one_statement:
            claim = self.hold_decided(request, now=now, actor=actor)
        else:
            with transaction.atomic():
                target, now = self.take(request, now=now)
                claim = self.create(target, request, now=now, actor=actor)
        if claim.current_state == self.model.HELD:
            count_on_commit(HOLDS_CREATED, self.domain)
        return claim

    def hold_decided(self, request, *, now: datetime, actor) -> ClaimT:
        """``decide`` in autocommit: one statement, no BEGIN or COMMIT. When it cannot decide (a claim
        committed under one of its locks after its snapshot), in a transaction: ``decide`` again, whose
        locks are then held to the COMMIT; if yet another claim committed under them between the two
        statements, once more, and that statement's snapshot is taken under the locks, so it decides
        (docs/decisions/0022-one-statement-holds.md). In a caller's transaction, straight to the second."""
        if not connection.in_atomic_block:
            claim = self.decide(request, now=locked_now(now), actor=actor)
            if claim is not None:
                return claim
        with transaction.atomic():
            for _ in range(2):
                claim = self.decide(request, now=locked_now(now), actor=actor)
                if claim is not None:
                    return claim
        raise RuntimeError(f"A {self.domain} hold could not decide under its own locks.")

    def take(self, request, *, now: datetime) -> tuple[Any, datetime]:
        """Lock the target, judge by the clock after the lock, and make sure it is free. Returns the
        target and that time."""
        target = self.lock_target(request)
        now = locked_now(now)
        self.check_target(target, request, now=now)
        self.make_free(target, request, now=now)
        return target, now

    # --- transitions ------------------------------------------------------------------------------

    def transition(
        self,
        *,
        claims: QuerySet,
        what: str,
        to_state: str,
        action: str,
        user,
        now: datetime,
        before: Callable[[], None] | None = None,
        check: Callable[[ClaimT], None] | None = None,
        metadata: dict | None = None,
    ) -> ClaimT:
        """Move the one claim ``claims`` selects (``what``: its name in messages) to ``to_state`` for
        ``user``. ``before`` locks the rows the global order puts before the claim (its guest, its slot);
        ``check`` is a domain rule about the locked claim (it belongs to the event the request names).

        An overdue hold is expired first and stays expired: that change commits even though the request
        is then refused (410 for a confirm, the domain's refusal otherwise).
        """
        with transaction.atomic():
            if before is not None:
                before()
            claim: ClaimT | None = locking.lock_claim(claims)
            if claim is None:
                raise NotFound(f"{what} does not exist.")
            self.policy.require(user, action, claim, what=what)
            if check is not None:
                check(claim)
            now = locked_now(now)
            if claim.is_overdue(now) and to_state != EXPIRED:
                self.write([claim], EXPIRED, actor=EXPIRY_ACTOR, now=now)
            elif claim.can_become(to_state):
                self.check_transition(claim, to_state, user=user, now=now)
                extra = self.changes(claim, to_state, now=now, metadata=metadata)
                return self.write([claim], to_state, actor=user, now=now, metadata=metadata, extra=extra)[0]
        if to_state == self.model.CONFIRMED and claim.current_state == EXPIRED:
            assert claim.expires_at is not None  # it was a hold, and a hold has an expiry
            raise HoldExpired(f"{what} expired at {claim.expires_at.isoformat()}.")
        raise self.refused(claim, to_state)

    def write(
        self,
        claims: list[ClaimT],
        to_state: str,
        *,
        actor,
        now: datetime,
        metadata: dict | None = None,
        extra: dict | None = None,
    ) -> list[ClaimT]:
        """Write one transition of ``claims`` (``extra``: more columns, for one claim), its audit events
        and side effects. Caller holds the claims' row locks (and those of their target)."""
        if not claims:
            return claims
        extra = extra or {}
        if extra and len(claims) != 1:
            raise ValueError("extra columns are written for one claim at a time")
        from_states = [c.current_state for c in claims]
        fields = {self.model.STATE_FIELD: to_state, "updated_at": now, **extra}
        for claim in claims:
            for field, value in fields.items():
                setattr(claim, field, value)
        events = [
            audit.event(
                subject=self.audit_subject(claim),
                event=to_state,
                from_state=from_state,
                to_state=to_state,
                actor=actor,
                metadata=self.audit_metadata(claim, metadata),
            )
            for claim, from_state in zip(claims, from_states, strict=True)
        ]
        along = self.write_along(claims, from_states=from_states, to_state=to_state, now=now)
        self.update_and_record(claims, fields, events, along=along)
        self.on_write(claims, from_states=from_states, to_state=to_state, now=now)
        if to_state == EXPIRED:
            count_on_commit(HOLDS_EXPIRED, self.domain, amount=len(claims))
        return claims

    def update_and_record(self, claims: list[ClaimT], fields: dict, events: list, along: Along = ()) -> None:
        """One statement: ``UPDATE`` the claims' ``fields`` and ``INSERT`` their audit events
        (``WITH moved AS (UPDATE …) INSERT INTO audit …``), both compiled by the ORM, and the
        ``write_along`` sub-statements ``along``."""
        if not connection.in_atomic_block:
            raise RuntimeError("a transition is written in the transaction that holds its locks")
        update = orm_sql.UpdateQuery(self.model)
        update.add_update_values(fields)
        update.add_q(Q(pk__in=[c.pk for c in claims]))
        update_sql, update_params = update.get_compiler(using=DEFAULT_DB_ALIAS).as_sql()
        insert = orm_sql.InsertQuery(AuditEvent)
        insert.insert_values([f for f in AuditEvent._meta.concrete_fields if not f.primary_key], events)
        [(insert_sql, insert_params)] = insert.get_compiler(using=DEFAULT_DB_ALIAS).as_sql()
        ctes = [f"moved AS ({update_sql})", *(f"along_{i} AS ({sql_})" for i, (sql_, _) in enumerate(along))]
        params = [*update_params, *(p for _, along_params in along for p in along_params), *insert_params]
        with connection.cursor() as cursor:
            cursor.execute(f"WITH {', '.join(ctes)} {insert_sql}", params)

    # --- expiry -----------------------------------------------------------------------------------

    def expire_overdue(self, overdue: QuerySet, *, now: datetime) -> list[ClaimT]:
        """Expire the holds ``overdue`` selects. Caller holds the lock of the resource they are on; their
        own rows are locked here (after it), so a confirm that got there first is seen and skipped."""
        claims: list[ClaimT] = [c for c in locking.lock_claims(overdue) if c.is_overdue(now)]
        if claims:
            self.write(claims, EXPIRED, actor=EXPIRY_ACTOR, now=now)
        return claims

    def expire_due(self, *, now: datetime, batch_size: int | None = None) -> int:
        """Flip every hold overdue at ``now`` to EXPIRED, one audit event each (the beat job): lock a batch
        with SKIP LOCKED, write it, commit, repeat. Two runs at once share the rows instead of doing them
        twice; a row a request holds (or whose target it holds) is left to that request, and not fetched
        again in this run. Returns how many holds were expired."""
        batch_size = batch_size or settings.EXPIRY_BATCH_SIZE
        total = 0
        while True:
            with transaction.atomic():
                batch: list[ClaimT] = locking.lock_batch(self.due(now=now), batch_size)
                if batch:
                    self.write(batch, EXPIRED, actor=EXPIRY_ACTOR, now=locked_now(now))
            total += len(batch)
            if len(batch) < batch_size:
                return total
