"""Seat holds: the events' ClaimEngine (its locks, checks and writes); an offer of freed seats to the
waiting list's head is a hold too."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
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
from events.services.hold_statement import _NAMES, _PICK_BEST, _PICK_NAMED, _seat_along, _seat_hold_statement
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
    now: datetime  # when it was asked: the lock statement judges which seats are taken by it
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


@dataclass
class Target:
    """The locked rows of a seat hold: its event and the seats (best available: the candidates), and,
    for best available, how many seats the lock statement's snapshot says are free."""

    event: Event
    seats: list[Seat]
    available: int | None = None
    adjacent_free: bool = False  # best available: the snapshot has a run of the quantity in one row


class PickAgain(Exception):
    """Best available: the seats locked came up short (others hold the free ones locked, or one was
    taken between the lock statement's snapshot and its lock). The attempt is rolled back, which drops
    its locks, and ``SeatHolds.hold`` picks again."""


def event_organisation(event_id: int) -> int | None:
    """The organisation of event ``event_id``; None when there is no such event."""
    return Event.objects.filter(pk=event_id).values_list("organisation_id", flat=True).first()


class SeatHoldPolicy(ClaimPolicy[SeatHoldGroup]):
    resource_field = "event"


class SeatHolds(ClaimEngine[SeatHoldGroup]):
    """A hold group holds several seats of one event; each seat's ``SeatClaim`` mirrors the group, so
    ``seat_claim_one_active_per_seat`` keeps a seat out of two active claims.

    The lean write path (docs/decisions/0009-lean-seats.md): a hold is BEGIN, two statements, COMMIT.
    ``lock_target`` is one statement: it shares the event, locks the seats and reads whether each is
    taken (by codes), or locks free seats skipping those others hold locked (best available).
    ``create`` is one statement after the locks are held, so it reads with a fresh snapshot: it picks
    the seats (best available: adjacent in one row where it can), expires the overdue holds on them,
    checks, inserts the group and its claims (``ON CONFLICT DO NOTHING`` on the partial unique index:
    the constraint stays the backstop) and writes the audit events. A transition is one statement in
    autocommit (ADR 0023; ``_seat_along``: the group, its claims, the event's lock and counter, the offers
    it ends, the audit events), in a transaction only when its seats free while people wait.
    """

    model, domain, policy = SeatHoldGroup, "events", SeatHoldPolicy()
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

    def limit_for(self, ask: SeatHold) -> int | None:
        """The cap a hold is held to: an offer has none (its quantity was held to it when its user joined,
        and it takes no user lock: it runs after the event's lock, ``locks.freed_events_lock_sql``)."""
        return None if ask.offer else self.cap.limit_for(ask.actor, self.acting_organisation(ask, owner_id=ask.user.pk))

    def organisation_of(self, ask: SeatHold) -> int | None:
        return event_organisation(ask.event_id)

    def lock_target(self, ask: SeatHold) -> Target:
        holder = ask.user.pk if self.limit_for(ask) is not None else None  # the cap's lock
        # The admission is read by the same statement (no round trip of its own), when a token is given.
        token = ask.queue_token
        admission = (token, ask.user.pk) if token and QUEUE_TOKEN.fullmatch(token) else None
        if ask.offer:
            # Seats free by their stored rows alone: an offer never expires another hold (it would wait
            # for that hold's row while holding the event's lock), and locks no seat (it waits for none).
            event, seats, (available, adjacent_free) = locks.share_event_lock_free_seats(
                ask.event_id,
                quantity=ask.count,
                window=ask.count + PICK_SLACK,
                free_at=OFFER_FREE_AT,
                skip_locked=False,
                lock_seats=False,
            )
        elif ask.seat_codes is not None:
            event, seats = locks.share_event_lock_seats(
                ask.event_id, codes=ask.seat_codes, taken_at=ask.now, holder=holder, admission=admission
            )
            available, adjacent_free = None, False
        else:
            event, seats, (available, adjacent_free) = locks.share_event_lock_free_seats(
                ask.event_id,
                quantity=ask.count,
                window=ask.count + PICK_SLACK,
                free_at=ask.now,
                skip_locked=not ask.wait_for_seats,
                holder=holder,
                admission=admission,
            )
        if event is None:
            raise NotFound(f"Event {ask.event_id} does not exist.")
        return Target(event, seats, available, adjacent_free)

    def _check_sales(self, event: Event, *, now: datetime) -> None:
        """Judged once the event row is shared: a close that committed is seen, one in flight waits."""
        if not event.sales_open:
            raise SalesClosed(f"Sales for event {event.pk} are closed.")
        if event.event_date <= now:
            raise SalesClosed(f"Event {event.pk} has already taken place.")

    def check_target(self, target: Target, ask: SeatHold, *, now: datetime) -> None:
        self._check_sales(target.event, now=now)
        if (
            target.event.queue_enabled
            and not target.event.admitted
            and not (ask.offer or access.may_act(ask.actor, target.event.organisation_id))
        ):
            raise NotAdmitted(
                f"Event {target.event.pk} sells through its queue: send X-Queue-Token of your admitted entry "
                f"(join with POST /api/events/{target.event.pk}/queue and poll it until it is ADMITTED)."
                if ask.queue_token is None
                else f"This X-Queue-Token is not an admission of yours to event {target.event.pk} (still waiting, "
                "lapsed, or of another user or event).",
                details={"eventId": target.event.pk},
            )
        if target.event.waiting_count and not ask.offer:
            raise WaitlistActive(
                f"{target.event.waiting_count} users are waiting for seats of event {target.event.pk}, and seats "
                "that free go to them first: join the waiting list.",
                details={"waitingCount": target.event.waiting_count},
            )
        if ask.seat_codes is None:
            assert target.available is not None  # best available: the lock statement counted the free seats
            if target.available < ask.count:
                raise SeatsUnavailable(
                    f"Event {target.event.pk} has {target.available} seats available, not {ask.count}.",
                    details={"requested": ask.count, "available": target.available, "seatCodes": []},
                )
            if len(target.seats) < ask.count:
                raise PickAgain  # the free seats are locked by holds in flight
            return
        unknown = sorted(set(ask.seat_codes) - {s.code for s in target.seats})
        if unknown:
            raise ValidationFailed(
                f"Event {target.event.pk} has no seats {', '.join(unknown)}.",
                details={"fields": {"seatCodes": [f"Unknown seat codes: {', '.join(unknown)}."]}, "seatCodes": unknown},
            )
        # Taken by the lock statement's snapshot: a fair refusal (it was taken when we asked).
        _refuse_taken(target.event, [s.code for s in target.seats if s.taken])

    def create(self, target: Target, ask: SeatHold, *, now: datetime, actor) -> SeatHoldGroup:
        event, best = target.event, ask.seat_codes is None
        expires_at = now + timedelta(minutes=event.hold_minutes)
        group_id = uuid.uuid4()
        limit = self.limit_for(ask)
        expired, taken, held, picked, codes, adjacent, claimed, contended = (
            HOLD_BEST if best else HOLD_NAMED
        ).fetchone(
            {
                "event": event.pk,
                "seats": [s.pk for s in target.seats],
                "quantity": ask.count,
                "group": group_id,
                "user": ask.user.pk,
                "limit": limit,
                "actor": None if ask.offer else actor.pk,
                "actor_label": OFFER_ACTOR if ask.offer else f"user:{actor.pk}",
                "expiry_actor": EXPIRY_ACTOR,
                "now": now,
                "expires_at": expires_at,
                "expires_at_json": json.dumps(expires_at, cls=DjangoJSONEncoder),
                "idempotency_key": ask.idempotency_key,
                "occurred_at": timezone.now(),
                "trace_id": current_request_id() or "",
            }
        )
        count_on_commit(HOLDS_EXPIRED, self.domain, amount=expired)
        if taken and ask.offer:
            raise PickAgain  # taken since the read of the candidates (an offer locks none)
        by_id = {s.pk: s.code for s in target.seats}
        _refuse_taken(event, [by_id[pk] for pk in taken])
        self.cap.check(count=held, asked=ask.count, limit=limit, eventId=event.pk)
        if len(picked) < ask.count:
            raise PickAgain  # best available: some candidates were taken after the lock statement's snapshot
        if best and not adjacent and target.adjacent_free and not ask.last_attempt:
            raise PickAgain  # adjacent seats are free, but others hold some of them locked: try those again
        if claimed < ask.count and ask.offer:
            raise PickAgain  # a hold in flight claimed one of its seats first (an offer locks none)
        if claimed < ask.count:
            # The unique index refused a claim. Contended: a hold overdue in this snapshot was confirmed
            # meanwhile (its confirm judged it before its expiry), so the confirm won; else a backstop.
            if not contended:
                CONSTRAINT_BACKSTOPS.labels("seat_claim_one_active_per_seat").inc()
            elif best:
                raise PickAgain
            raise SeatsUnavailable(
                f"Some of the seats of event {event.pk} were just taken.", details={"seatCodes": codes}
            )
        group = SeatHoldGroup(
            pk=group_id,
            event=event,
            user=ask.user,
            state=State.HELD,
            seat_count=ask.count,
            expires_at=expires_at,
            idempotency_key=ask.idempotency_key,
            created_at=now,
            updated_at=now,
        )
        group.seats = [Seat(pk=pk, event_id=event.pk, code=code) for pk, code in zip(picked, codes, strict=True)]
        return group

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


def _refuse_taken(event: Event, codes: list[str]) -> None:
    if codes:
        raise SeatsUnavailable(f"Seats {', '.join(codes)} of event {event.pk} are taken.", details={"seatCodes": codes})


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


HOLD_NAMED, HOLD_BEST = (
    _seat_hold_statement(_PICK_NAMED, SeatHolds.cap),
    _seat_hold_statement(_PICK_BEST, SeatHolds.cap),
)


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
            now=now,
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
