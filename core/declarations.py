"""What a domain declares about its claims (``ClaimDeclarations``, the base of ``core.engine.ClaimEngine``),
and the statements composed from it once per process: a transition's (``transition_statement``,
docs/decisions/0023-one-statement-transitions.md) and the expiry's (``expiry_statement``), with what
a domain writes beside its claims in them (``Along``) and what a transition's statement says
(``Outcome``). The engine (``core.engine``) runs them."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, cast

from django.db.models import Field, Model
from psycopg import sql

from core import claims, locking, statements
from core.audit import services as audit
from core.claims import EXPIRED, Claim, column
from core.errors import DomainError
from core.policy import Cap, ClaimPolicy, ClaimT
from core.statements import P, table


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


class ClaimDeclarations(Generic[ClaimT]):
    """What a domain declares about its claims; the engine (``core.engine.ClaimEngine``) is built on it."""

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

    # What a transition's statement is made of (composed once per action and state: ``transition_statement``).
    # Each is SQL over the claim's locked row ``l`` (its columns by name, ``reads`` by theirs, ``locked_at``:
    # the time judged by) or, for ``changes``, the target row ``t``; parameters by name.

    def lock_before(self, action: str) -> sql.Composable:
        """Conditions on the claim row ``c`` that lock the rows the global order puts before it (its guest,
        its slot): ``AND EXISTS (… FOR NO KEY UPDATE)``, held before the claim's own lock. None by default."""
        return sql.SQL("")

    def lock_seams(self) -> tuple:
        """The seams of the domain's ``locks.py`` its statements are made of (``lock_before``'s, ``along``'s),
        read off the module at each call: the statements are cached by them (``seams_of``). None by default."""
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


# --- the statements -------------------------------------------------------------------------------


def _claim_columns(model: type[Model]) -> list[Field]:
    return list(model._meta.concrete_fields)


def _names(alias: str, fields: Sequence[Field]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, cast(str, f.column)) for f in fields)


def _written(engine: ClaimDeclarations, to_state: str) -> sql.Composed:
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


class TransitionStatement(statements.Statement):
    """One transition's statement and how its row reads: the claim before (``l``: its columns, the
    domain's reads, the time judged by, the verdicts), the claim as written (``m``; NULLs when nothing
    was), how many claims waited for a transaction, the domain's returns. No row: no such claim."""

    def __init__(self, composed: sql.Composable, model: type[Claim], reads: Sequence[str]):
        super().__init__(composed)
        self.model, self.reads = model, list(reads)
        self.width = len(_claim_columns(model))  # type: ignore[arg-type]  # a Claim is a Model

    def run(self, engine: ClaimDeclarations, params: dict) -> Outcome | None:
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


def seams_of(engine: ClaimDeclarations) -> tuple:
    """The lock seams a statement of ``engine`` is composed with: ``core.locking``'s and its domain's
    (``ClaimEngine.lock_seams``). A race control replaces one; the statements are cached by them, so it
    gets a statement composed with its replacement."""
    return (locking.transition_lock_sql, locking.user_lock_sql, *engine.lock_seams())


@functools.cache
def transition_statement(
    engine: ClaimDeclarations, action: str, to_state: str, by: str, seams: tuple
) -> TransitionStatement:
    """``engine``'s transition of one claim (by its field ``by``) to ``to_state`` for ``action``, composed
    once per (engine, action, state, key, ``seams_of``). ``locked`` takes the locks (the earlier kinds as its
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
    return TransitionStatement(composed, model, list(reads))


@functools.cache
def expiry_statement(engine: ClaimDeclarations, batch: bool, seams: tuple) -> statements.Statement:
    """``engine``'s expiry of overdue holds, composed once (per ``seams_of``): ``batch``, the expiry job's (up
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
