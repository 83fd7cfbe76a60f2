"""The claim engine: the one lifecycle of every claim (a car reservation, a seat hold group, a slot
booking). A domain subclasses ``ClaimEngine[its claim model]`` and declares only what is its own
(the defaults are ``core.declarations.ClaimDeclarations``'s; ``ClaimPolicy`` and ``Cap`` are ``core.policy``'s):

- ``model`` (a ``Claim``), ``domain`` (the metrics label) and ``policy`` (who may do what, in Python
  and as SQL: ``ClaimPolicy.sql``);
- for a hold that is one statement (``one_statement``, the car's, the slot booking's and the seats'): ``decide``,
  that statement (docs/decisions/0022-one-statement-holds.md): its locks, the lazy expiry, the checks, the insert, the
  audit events; None when its snapshot may be stale under a lock it took (then ``hold_decided`` runs it
  again in a transaction);
- for a hold in a transaction (the appointments'): ``lock_target`` (its rows, in the order of
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

Every statement is composed once per process (ADR 0007, ADR 0021) and prepared: the transitions' and the
expiry's in ``core.declarations``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from core import declarations
from core.claims import EXPIRED
from core.declarations import ClaimDeclarations, Outcome
from core.errors import HoldExpired, NotFound
from core.expiry import locked_now
from core.metrics import HOLDS_CREATED, HOLDS_EXPIRED, count_on_commit
from core.middleware import current_request_id
from core.organisations import access
from core.policy import ClaimT

EXPIRY_ACTOR = "system:expire_holds"  # the actor of every expiry nobody asked for


class ClaimEngine(ClaimDeclarations[ClaimT]):
    """One domain's claim lifecycle: what the domain declares (``ClaimDeclarations``), run the same way for all."""

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

    def acting_organisation(self, ask, *, owner_id: int) -> int | None:
        """``access.acting_in`` for ``ask`` (its ``actor``, for ``owner_id``): the organisation of what it
        holds when that matters to the cap, read only then."""
        return access.acting_in(ask.actor, owner_id=owner_id, organisation=lambda: self.organisation_of(ask))

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
        ``user``: one statement (``declarations.transition_statement``), in autocommit when called outside a
        transaction. It locks the rows the global order puts before the claim (``lock_before``), then the
        claim; judges by the clock once they are held; asks the policy (403), the domain's check (``fits``;
        ``check`` raises its refusal), whether the hold is overdue; writes the claim, its side effects
        (``along``) and its audit events. ``params``: the domain's own parameters of the statement.

        An overdue hold is expired instead, and stays expired: that change commits even though the request
        is then refused (410 for a confirm, the domain's refusal otherwise). When the side effects need a
        transaction (``Along.holds``: seats freed while people wait are offered to them), the statement
        writes nothing in autocommit and runs again in one, followed by ``after``.
        """
        statement = declarations.transition_statement(self, action, to_state, by, declarations.seams_of(self))
        values = {
            "claim": claim_id,
            "now": now,
            **self.policy.params(user),
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
            raise self.policy.refusal(action, what=what, user=user, owner_id=self.policy.owner_id(claim))
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

    def _run(self, statement: declarations.TransitionStatement, values: dict) -> Outcome[ClaimT] | None:
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
        """Expire the holds among ``ids`` that are overdue at ``now``, one statement
        (``declarations.expiry_statement``). Caller holds the lock of the resource they are on; their own
        rows are locked here (after it), so a confirm that got there first is seen and skipped. Returns how
        many were expired."""
        if not ids:
            return 0
        _, expired, *_ = declarations.expiry_statement(self, False, declarations.seams_of(self)).fetchone(
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
        statement = declarations.expiry_statement(self, True, declarations.seams_of(self))
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
