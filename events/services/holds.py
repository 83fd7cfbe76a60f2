"""Seat holds: the events' ClaimEngine (its one hold statement, its checks and its transitions); an offer of
freed seats to the waiting list's head is a hold too."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection
from django.utils import timezone
from psycopg import sql

from core import claims, statements
from core.audit import services as audit
from core.declarations import Along, Outcome
from core.engine import EXPIRY_ACTOR, ClaimEngine
from core.errors import DomainError, NotFound, ValidationFailed
from core.metrics import CONSTRAINT_BACKSTOPS, HOLDS_EXPIRED, count_on_commit
from core.middleware import current_request_id
from core.organisations import access
from core.policy import Cap, ClaimPolicy
from events import locks
from events.models import QUEUE_TOKEN, Event, Seat, SeatHoldGroup, WaitlistEntry
from events.services.hold_statement import (
    _NAMES,
    BEST_SKIP,
    BEST_WAIT,
    BY_CODES,
    OFFER,
    _seat_along,
    seat_hold_statement,
)
from events.services.rules import (
    ENTRY_SUBJECT,
    OFFER_ACTOR,
    OFFER_FREE_AT,
    PICK_ATTEMPTS,
    PICK_SLACK,
    BookingNotActive,
    Entry,
    HoldNotActive,
    NotAdmitted,
    SalesClosed,
    SeatCountConflict,
    SeatsUnavailable,
    State,
    WaitlistActive,
    hold_subject,
    logger,
)
from web.accounts.models import User


@dataclass(frozen=True)
class SeatHold:
    """What a seat hold asks for: the named seats, or ``quantity`` best-available ones."""

    event_id: int
    user: User
    actor: User  # who asks: the holder, or an operator for them (exempt from the cap)
    seat_codes: list[str] | None
    quantity: int | None
    idempotency_key: str
    queue_token: str | None = None  # X-Queue-Token: needed while the event's queue is on
    attempt: int = 0  # best available: picking again after the seats locked came up short
    offer: bool = False  # made by the waiting list for its head (``waitlist_offer``), not asked by a client

    @property
    def wait_for_seats(self) -> bool:
        """Every other attempt waits for the seats it picks: no busy loop while other holds commit."""
        return self.attempt % 2 == 1

    @property
    def last_attempt(self) -> bool:
        return self.attempt == PICK_ATTEMPTS - 1

    @property
    def count(self) -> int:
        if self.seat_codes is not None:
            return len(self.seat_codes)
        assert self.quantity is not None  # seat_hold gives one of the two
        return self.quantity


class PickAgain(Exception):
    """Best available: the seats locked came up short (others hold the free ones locked, or a hold claimed
    one since the statement's snapshot), or are not adjacent while the snapshot has a free run. The
    attempt wrote no hold (and, in a transaction, is rolled back), and ``SeatHolds.hold`` picks again."""


def event_organisation(event_id: int) -> int | None:
    """The organisation of event ``event_id``; None when there is no such event."""
    return access.organisation_of(Event, event_id)


class SeatHoldPolicy(ClaimPolicy[SeatHoldGroup]):
    resource_field = "event"


class SeatHolds(ClaimEngine[SeatHoldGroup]):
    """A hold group holds several seats of one event; each seat's ``SeatClaim`` mirrors the group, so
    ``seat_claim_one_active_per_seat`` keeps a seat out of two active claims.

    The hold is one statement in autocommit (``decide``, docs/decisions/0022-one-statement-holds.md): it
    takes the holder's lock (the cap), shares the event and locks the seats (by codes in id order; best
    available skipping the seats others hold locked, or on every other attempt waiting for them), reads
    whether its snapshot is still the truth under those locks (``locking.fresh_sql``: the holder's and
    the seats' claim sequences), expires the overdue holds on the seats it picks, inserts the group and
    its claims (a plain ``INSERT``: the constraint is the backstop, and its refusal fails the statement
    whole) and writes the audit events. When a hold of the same holder committed after the statement's
    snapshot, it writes nothing and the engine runs it again in a transaction (``hold_decided``). A
    transition is one statement in autocommit (ADR 0023; ``_seat_along``: the group, its claims, the
    event's lock and counter, the offers it ends, the audit events), in a transaction only when its seats
    free while people wait.
    """

    model, domain, policy = SeatHoldGroup, "events", SeatHoldPolicy()
    one_statement = True
    cap = Cap(
        rule="held_seats_per_user_per_event",
        setting="EVENT_MAX_HELD_SEATS_PER_USER",
        message="You hold {count} seats of this event and ask for {asked}; a user may hold at most {limit} at once.",
        summary="A user holds at most {limit} seats of one event at once.",
        counts=claims.LIVE_HOLDS,
    )

    def hold(self, ask: SeatHold, *, now: datetime, actor) -> SeatHoldGroup:
        if ask.seat_codes is not None:
            return super().hold(ask, now=now, actor=actor)
        for attempt in range(PICK_ATTEMPTS):
            try:
                return super().hold(replace(ask, attempt=attempt), now=now, actor=actor)
            except PickAgain:
                continue
        raise SeatsUnavailable(
            f"The seats of event {ask.event_id} are selling too fast; try again.",
            details={"requested": ask.quantity, "seatCodes": []},
        )

    def organisation_of(self, ask: SeatHold) -> int | None:
        return event_organisation(ask.event_id)

    def decide(self, ask: SeatHold, *, now: datetime, actor) -> SeatHoldGroup | None:
        best = ask.seat_codes is None
        kind = OFFER if ask.offer else BY_CODES if not best else BEST_WAIT if ask.wait_for_seats else BEST_SKIP
        # The organisation the actor holds in when they operate one (``acting_organisation``: an operator
        # holding for someone outside their organisations is refused, 404): inside it, an operator is
        # exempt from the cap and from the queue. An offer is held to neither: its quantity was held to the
        # cap when its user joined, and it takes no user lock (it runs after the event's lock,
        # ``locks.freed_events_lock_sql``).
        organisation_id = None if ask.offer else self.acting_organisation(ask, owner_id=ask.user.pk)
        limit = None if ask.offer else self.cap.limit_for(ask.actor, organisation_id)
        exempt = ask.offer or access.acts_in(ask.actor, organisation_id)
        token = ask.queue_token
        admitted = token is not None and QUEUE_TOKEN.fullmatch(token) is not None
        group_id = uuid.uuid4()
        params = {
            "event": ask.event_id,
            "codes": ask.seat_codes,
            "quantity": ask.count,
            "window": ask.count + PICK_SLACK if best else ask.count,
            "reach": 8 * (ask.count + PICK_SLACK),
            "owner": None if ask.offer else self.cap.locked_owner(ask.user.pk, ask.actor, organisation_id),
            "user": ask.user.pk,
            "limit": limit,
            "now": now,
            # An offer judges a seat by its stored rows alone: it never expires another hold (it would
            # wait for that hold's row while holding the event's lock).
            "free_at": OFFER_FREE_AT if ask.offer else now,
            "exempt": exempt,
            "offer": ask.offer,
            "apart": not best or ask.last_attempt,
            "queue_token": token if admitted else None,
            "queue_user": ask.user.pk,
            "group": group_id,
            "actor": None if ask.offer else actor.pk,
            "actor_label": OFFER_ACTOR if ask.offer else f"user:{actor.pk}",
            "expiry_actor": EXPIRY_ACTOR,
            "idempotency_key": ask.idempotency_key,
            "occurred_at": timezone.now(),
            "trace_id": current_request_id() or "",
        }
        try:
            row = seat_hold_statement(kind, self.cap).fetchone(params)
        except IntegrityError as exc:
            if getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None) != SEAT_BACKSTOP:
                raise
            # The unique index refused a claim, and the statement failed whole (nothing of it is kept). An
            # offer (it locks no seat) lost to a hold in flight: pick again. Otherwise a backstop: a claim
            # on a seat this statement held locked and found free, fresh.
            if ask.offer:
                raise PickAgain from None
            CONSTRAINT_BACKSTOPS.labels(SEAT_BACKSTOP).inc()
            raise SeatsUnavailable(
                f"Some of the seats of event {ask.event_id} were just taken.",
                details={"seatCodes": ask.seat_codes or []},
            ) from None
        event_id, sales_open, event_date, _, waiting, queue_enabled, admitted_now, held, found, taken = row[:10]
        available, locked, *as_locked, owner_fresh, moved = row[10:18]
        picked, codes, expired, expires_at, claimed = row[18:]
        if event_id is None:
            raise NotFound(f"Event {ask.event_id} does not exist.")
        if locked:  # the event as its lock returned it: a close of sales or a queue switched on is seen
            sales_open, event_date, waiting, queue_enabled = as_locked
        self.check_sales(event_id, sales_open=sales_open, event_date=event_date, now=now)
        if queue_enabled and not admitted_now and not exempt:
            raise NotAdmitted(
                f"Event {event_id} sells through its queue: send X-Queue-Token of your admitted entry "
                f"(join with POST /api/events/{event_id}/queue and poll it until it is ADMITTED)."
                if ask.queue_token is None
                else f"This X-Queue-Token is not an admission of yours to event {event_id} (still waiting, "
                "lapsed, or of another user or event).",
                details={"eventId": event_id},
            )
        if waiting and not ask.offer:
            raise WaitlistActive(
                f"{waiting} users are waiting for seats of event {event_id}, and seats "
                "that free go to them first: join the waiting list.",
                details={"waitingCount": waiting},
            )
        if best and available < ask.count:
            raise SeatsUnavailable(
                f"Event {event_id} has {available} seats available, not {ask.count}.",
                details={"requested": ask.count, "available": available, "seatCodes": []},
            )
        if not best:
            unknown = sorted(set(ask.seat_codes or ()) - set(found))
            if unknown:
                raise ValidationFailed(
                    f"Event {event_id} has no seats {', '.join(unknown)}.",
                    details={
                        "fields": {"seatCodes": [f"Unknown seat codes: {', '.join(unknown)}."]},
                        "seatCodes": unknown,
                    },
                )
            _refuse_taken(event_id, taken)  # taken by the snapshot: it was taken when we asked
        self.cap.check(count=held, asked=ask.count, limit=limit, eventId=event_id)
        if not locked:
            raise NotFound(f"Event {ask.event_id} does not exist.")  # deleted since the snapshot
        if not owner_fresh:
            return None  # the count of the holder's seats may be stale: it wrote nothing
        count_on_commit(HOLDS_EXPIRED, self.domain, amount=expired)
        if not best:
            _refuse_taken(event_id, moved)  # claimed by a hold that committed while we waited for the seats
        if expires_at is None:
            # Best available: the free seats are locked by holds in flight or claimed since the snapshot, or
            # not adjacent while a run is free. Or a hold overdue in the snapshot on a picked seat was
            # confirmed meanwhile (its confirm judged it before its expiry): the confirm won.
            if best:
                raise PickAgain
            raise SeatsUnavailable(
                f"Some of the seats of event {event_id} were just taken.", details={"seatCodes": codes}
            )
        assert claimed == ask.count  # the claims' INSERT fails the statement otherwise
        group = SeatHoldGroup(
            pk=group_id,
            event_id=event_id,
            user=ask.user,
            state=State.HELD,
            seat_count=ask.count,
            expires_at=expires_at,
            idempotency_key=ask.idempotency_key,
            created_at=now,
            updated_at=now,
        )
        group.seats = [Seat(pk=pk, event_id=event_id, code=code) for pk, code in zip(picked, codes, strict=True)]
        return group

    def check_sales(self, event_id: int, *, sales_open: bool, event_date: datetime, now: datetime) -> None:
        """Judged on the event as its lock returned it: a close that committed is seen, one in flight waits."""
        if not sales_open:
            raise SalesClosed(f"Sales for event {event_id} are closed.")
        if event_date <= now:
            raise SalesClosed(f"Event {event_id} has already taken place.")

    def transition(self, **kwargs) -> SeatHoldGroup:
        with _counter_backstop((kwargs.get("params") or {}).get("event")):
            return super().transition(**kwargs)

    def audit_subject(self, group: SeatHoldGroup) -> audit.Subject:
        return hold_subject(group)

    def audit_metadata(self) -> sql.Composable:
        return sql.SQL("jsonb_build_object('eventId', m.{g_event}, 'bookingGroupId', m.{g_booking_group_id})").format(
            **_NAMES
        )

    def fits(self) -> sql.Composable:
        """The hold belongs to the event the request names (``%(event)s``; NULL: any)."""
        return sql.SQL("(%(event)s::bigint IS NULL OR l.{g_event} = %(event)s::bigint)").format(**_NAMES)

    def changes(self, to_state: str) -> dict[str, sql.Composable]:
        if to_state == State.CONFIRMED:
            return {"booking_group_id": sql.SQL("%(booking_group)s::uuid"), "confirmed_at": sql.SQL("t.locked_at")}
        if to_state == State.CANCELLED:
            return {"cancelled_at": sql.SQL("t.locked_at")}
        return {}

    def along(self, to_state: str) -> Along:
        return _seat_along(to_state)

    def lock_seams(self) -> tuple:
        return (locks.freed_events_lock_sql,)

    def loaded(self, group: SeatHoldGroup, reads: dict[str, Any], returns: tuple) -> None:
        group.seat_codes, group.waiting_events = list(returns[0]), list(returns[1])

    def after(self, outcome: Outcome[SeatHoldGroup], *, now: datetime) -> None:
        """Seats freed while people wait go to the waiting list, in the statement's transaction (which
        holds the events' locks: ``locks.freed_events_lock_sql``)."""
        self._offer(outcome.claim.waiting_events, now=now)

    def after_expiry(self, returns: list, *, now: datetime) -> None:
        self._offer(returns[0], now=now)

    def _offer(self, event_ids: list[int], *, now: datetime) -> None:
        for event_id in sorted(event_ids):
            waitlist_offer(event_id=event_id, now=now)

    def refused(self, group: SeatHoldGroup, to_state: str) -> DomainError:
        if to_state == State.CANCELLED:
            return BookingNotActive(
                f"Booking {group.booking_group_id} is {group.state}.", details={"state": group.state}
            )
        return HoldNotActive(f"Hold {group.pk} is {group.state}.", details={"state": group.state})


def _refuse_taken(event_id: int, codes: list[str]) -> None:
    if codes:
        raise SeatsUnavailable(f"Seats {', '.join(codes)} of event {event_id} are taken.", details={"seatCodes": codes})


@contextlib.contextmanager
def _counter_backstop(event_id: int | None) -> Iterator[None]:
    """Run a statement that moves the booked-seat counter of an event (``event_id``, when known); a refusal
    by ``event_confirmed_within_total`` becomes 409 ``seat_count_conflict``.

    The services keep the counter equal to the confirmed claims, so the constraint should never refuse;
    if a counter has drifted anyway (a write outside the services), the request gets a 409 instead of a
    500, and the statement (its transaction, or its savepoint) is rolled back: nothing is written.
    """
    try:
        yield
    except IntegrityError as exc:
        if getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None) != "event_confirmed_within_total":
            raise
        CONSTRAINT_BACKSTOPS.labels("event_confirmed_within_total").inc()
        logger.error("The booked-seat counter of event %s refused to move: it has drifted", event_id)
        raise SeatCountConflict(
            "The seat counts of the event are out of step; the change was not made.",
            details={"eventId": event_id} if event_id is not None else {},
        ) from None


SEAT_BACKSTOP = "seat_claim_one_active_per_seat"


SEAT_HOLDS = SeatHolds()


_W, _U = WaitlistEntry._meta.concrete_fields, User._meta.concrete_fields


# The head of the event's waiting list (its first WAITING entry, on ``waitlist_entry_waiting_idx``) and its user.
_WAITLIST_HEAD = statements.Statement(
    sql.SQL("""
SELECT {entry}, {user} FROM {w_table} w JOIN {u_table} u ON {u_id} = w.{w_user}
WHERE w.{w_event} = %(event)s AND w.{w_state} = {waiting} ORDER BY w.{w_id} LIMIT 1""").format(
        entry=sql.SQL(", ").join(claims.column(WaitlistEntry, f.name, "w") for f in _W),
        user=sql.SQL(", ").join(claims.column(User, f.name, "u") for f in _U),
        u_table=statements.table(User),
        u_id=claims.column(User, "id", "u"),
        waiting=sql.Literal(Entry.WAITING),
        **_NAMES,
    )
)


# One offer to the head, once its hold is made: the entry, the event's waiting counter (returned: how many
# still wait), the audit event.
ENTRY_OFFERED = statements.Statement(
    sql.SQL("""
WITH offered AS (
    UPDATE {w_table} SET {w_state} = {offered}, {w_hold_group} = %(group)s, {w_offer_expires_at} = %(expires_at)s,
                         {w_updated_at} = %(now)s
    WHERE {w_id} = %(entry)s AND {w_state} = {waiting} RETURNING {w_id}
), counted AS (
    UPDATE {e_table} SET {e_waiting_count} = {e_waiting_count} - 1
    WHERE {e_id} = %(event)s AND EXISTS (SELECT FROM offered)
    RETURNING {e_waiting_count}
), recorded AS ({recorded})
SELECT (SELECT COUNT(*) FROM offered), (SELECT {e_waiting_count} FROM counted)""").format(
        offered=sql.Literal(Entry.OFFERED),
        waiting=sql.Literal(Entry.WAITING),
        e_table=statements.table(Event),
        e_waiting_count=claims.column(Event, "waiting_count"),
        e_id=claims.column(Event, "id"),
        recorded=statements.system_events(
            source=sql.Identifier("offered"),
            actor_label=statements.P("actor_label"),
            subject_type=sql.Literal(ENTRY_SUBJECT),
            subject_id=sql.SQL("id::text"),
            event_type=sql.Literal(Entry.OFFERED),
            from_state=sql.Literal(Entry.WAITING),
            to_state=sql.Literal(Entry.OFFERED),
            metadata=sql.SQL("{}::jsonb").format(statements.P("metadata")),
        ),
        **_NAMES,
    )
)


def waitlist_offer(*, event_id: int, now: datetime) -> list[WaitlistEntry]:
    """Offer the event's free seats to its waiting list, head first: each offer is an ordinary seat
    hold (best available, adjacent where possible) owned by the entry's user, for the event's hold
    length. Strict order: it stops at the first entry whose whole quantity is not free (or when sales
    are closed). Caller holds the event's row lock (``lock_event``, ``freed_events_lock_sql``)."""
    offered: list[WaitlistEntry] = []
    while True:
        row = _WAITLIST_HEAD.fetchone({"event": event_id})
        if row is None:
            return offered
        head = WaitlistEntry.from_db(connection.alias, [f.attname for f in _W], row[: len(_W)])
        head.user = User.from_db(connection.alias, [f.attname for f in _U], row[len(_W) :])
        ask = SeatHold(
            event_id=event_id,
            user=head.user,
            actor=head.user,
            seat_codes=None,
            quantity=head.quantity,
            idempotency_key="",
            offer=True,
        )
        try:
            group = SEAT_HOLDS.hold(ask, now=now, actor=head.user)
        except (SeatsUnavailable, SalesClosed):
            return offered
        codes = sorted(s.code for s in group.seats)
        metadata = {
            "eventId": event_id,
            "userId": head.user_id,
            "quantity": head.quantity,
            "holdGroupId": group.pk,
            "seatCodes": codes,
            "expiresAt": group.expires_at,
        }
        moved, still_waiting = ENTRY_OFFERED.fetchone(
            {
                "group": group.pk,
                "expires_at": group.expires_at,
                "now": now,
                "entry": head.pk,
                "event": event_id,
                "occurred_at": timezone.now(),
                "actor_label": OFFER_ACTOR,
                "metadata": json.dumps(metadata, cls=DjangoJSONEncoder),
                "trace_id": current_request_id() or "",
            }
        )
        if not moved:  # under the event's lock a WAITING entry cannot change: a lock is missing
            raise RuntimeError(f"waiting-list entry {head.pk} changed under its event's lock")
        head.state, head.hold_group, head.offer_expires_at = Entry.OFFERED, group, group.expires_at
        offered.append(head)
        if not still_waiting:
            return offered
