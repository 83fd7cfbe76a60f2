"""Every write to events, seats and seat claims (docs/contract.md §5).

The hold lifecycle is ``booking_site.engine``'s and the locks are ``booking_site.locking``'s (the
order is written there). This module declares what is the events' own: a hold shares the event row
(so it judges ``sales_open`` after a close has committed) and locks its seats; a seat is free when no
active claim is on it; every seat claim mirrors its group; confirms and cancels move the event's
``confirmed_seats`` counter, last; and the events' errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from psycopg import sql

from booking_site import claims, locking, statements
from booking_site.accounts.models import User
from booking_site.audit import services as audit
from booking_site.audit.models import AuditEvent
from booking_site.engine import CANCEL, CONFIRM, EXPIRE, EXPIRY_ACTOR, RELEASE, Along, Cap, ClaimEngine, Outcome
from booking_site.errors import Conflict, DomainError, NotFound, NotOwner, ValidationFailed, bounded
from booking_site.expiry import locked_now
from booking_site.metrics import CONSTRAINT_BACKSTOPS, HOLDS_EXPIRED, count_on_commit
from booking_site.middleware import current_request_id
from events import selectors
from events.models import QUEUE_TOKEN, Event, Seat, SeatClaim, SeatHoldGroup, WaitlistEntry

State = SeatHoldGroup.State
Entry = WaitlistEntry.State
# What a hold group's transition makes of the waiting-list entry it was offered to.
ENTRY_STATE_OF = {State.CONFIRMED: Entry.ACCEPTED, State.RELEASED: Entry.EXPIRED, State.EXPIRED: Entry.EXPIRED}
FREEING_STATES = (State.RELEASED, State.EXPIRED, State.CANCELLED)  # transitions whose seats are free again
OFFER_ACTOR = "system:waitlist"  # the actor of an offer's hold: the waiting list made it
# An offer judges a seat by its stored rows: a hold, even an overdue one, still has it (until it is expired).
OFFER_FREE_AT = datetime.min.replace(tzinfo=UTC)
MAX_SEATS_PER_EVENT = 100_000
MAX_SEATS_PER_HOLD = 50
PICK_ATTEMPTS = 20  # best-available: how often to pick again when the seats locked came up short
PICK_SLACK = 4  # best-available: candidates locked beyond the quantity, so a run can still be found
logger = logging.getLogger(__name__)
SECTION_NAME = re.compile(r"^[A-Za-z0-9]{1,20}$")
HOLD_MINUTES_RANGE = (1, 60)
ADMITTED_PER_MINUTE_RANGE = (1, 10_000)  # event_admitted_per_minute_range
ADMISSION_WINDOW_RANGE = (1, 120)  # event_admission_window_range
# How far ahead an event may be scheduled. Ten years is past any real on-sale window, and keeps every
# event date far from datetime's year-9999 edge, where rendering it in a time zone east of UTC (or
# reading a naive date in one west of it) overflows.
MAX_EVENT_DATE_AHEAD = timedelta(days=3653)


class SeatsUnavailable(Conflict):
    code = "seats_unavailable"


class SalesClosed(Conflict):
    code = "sales_closed"


class HoldNotActive(Conflict):
    code = "hold_not_active"


class WaitlistActive(Conflict):
    """A public hold on an event whose waiting list has someone WAITING: freed seats are theirs first."""

    code = "waitlist_active"


class SeatsAvailable(Conflict):
    """Joining the waiting list while that many seats are free and nobody waits: hold them instead."""

    code = "seats_available"


class WaitlistClosed(Conflict):
    code = "waitlist_closed"


class AlreadyWaiting(Conflict):
    code = "already_waiting"


class EntryNotWaiting(Conflict):
    code = "waitlist_entry_not_waiting"


class BookingNotActive(Conflict):
    code = "booking_not_active"


class NotAdmitted(DomainError):
    """The event's sale is behind its admission queue, and the hold brought no ``X-Queue-Token`` of an
    entry of its user admitted now (docs/decisions/0017-admission-queue.md)."""

    status, code = 403, "not_admitted"


class EventMismatch(DomainError):
    status, code = 400, "event_mismatch"


class SeatCountConflict(Conflict):
    """The event's booked-seat counter refused a move (``event_confirmed_within_total``): the counter
    and the claims disagree. Nothing is written; the request may be retried once an operator has
    looked (the log says which event)."""

    code = "seat_count_conflict"


HOLD_SUBJECT, ENTRY_SUBJECT = "seat_hold_group", "waitlist_entry"  # the audit subjects of a hold group, an entry


def hold_subject(group: SeatHoldGroup) -> audit.Subject:
    """A hold group's whole life (held, confirmed as a booking, cancelled) is one audit subject."""
    return audit.Subject(type=HOLD_SUBJECT, id=group.pk)


# --- events and their seats ---------------------------------------------------------------------------


def event_date_problem(event_date: datetime, *, now: datetime) -> str | None:
    """Why ``event_date`` cannot be an event's date, or None. An event is scheduled in the future, at
    most ``MAX_EVENT_DATE_AHEAD`` from now (the API, the admin forms and the services all ask this)."""
    if event_date <= now:
        return "The event date must be in the future."
    if event_date > now + MAX_EVENT_DATE_AHEAD:
        return f"The event date must be at most {MAX_EVENT_DATE_AHEAD.days // 365} years ahead."
    return None


@dataclass(frozen=True)
class SeatLayout:
    """Sections x rows x seats per row, giving codes like ``A-3-12``."""

    sections: tuple[str, ...]
    rows: int
    seats_per_row: int

    @property
    def total(self) -> int:
        return len(self.sections) * self.rows * self.seats_per_row

    def validate(self) -> None:
        if not self.sections or len(set(self.sections)) != len(self.sections):
            raise ValidationFailed.for_field("layout", "Sections must be given, each once.")
        bad = [s for s in self.sections if not SECTION_NAME.match(s)]
        if bad:
            raise ValidationFailed.for_field("layout", f"Section names are 1-20 letters or digits: {bad}.")
        if self.rows < 1 or self.seats_per_row < 1:
            raise ValidationFailed.for_field("layout", "Rows and seats per row must be at least 1.")


def event_create(
    *,
    name: str,
    event_date: datetime,
    location: str,
    now: datetime,
    total_seats: int | None = None,
    layout: SeatLayout | None = None,
    hold_minutes: int = 5,
    sales_open: bool = True,
    actor: User | None = None,
) -> Event:
    """Create an event and all its seats: plain ``S1…Sn`` from ``total_seats``, or ``layout``.

    The seats are generated by PostgreSQL in one ``INSERT … SELECT generate_series`` statement: 20,000
    seats are one round trip.
    """
    if layout is not None:
        layout.validate()
        if total_seats is not None and total_seats != layout.total:
            raise ValidationFailed.for_field("totalSeats", f"The layout has {layout.total} seats, not {total_seats}.")
        total_seats = layout.total
    total_seats = bounded(total_seats, "totalSeats", 1, MAX_SEATS_PER_EVENT)
    problem = event_date_problem(event_date, now=now)
    if problem:
        raise ValidationFailed.for_field("date", problem)
    bounded(hold_minutes, "holdMinutes", *HOLD_MINUTES_RANGE)
    with transaction.atomic():
        event = Event.objects.create(
            name=name,
            event_date=event_date,
            location=location,
            total_seats=total_seats,
            hold_minutes=hold_minutes,
            sales_open=sales_open,
            created_at=now,
            updated_at=now,
        )
        _generate_seats(event, layout)
        audit.record(
            subject=event,
            event="CREATED",
            to_state="OPEN" if sales_open else "CLOSED",
            actor=actor,
            metadata={"totalSeats": total_seats, "layout": layout and layout.__dict__},
        )
    return event


_SEAT_COLUMNS = sql.SQL(", ").join(claims.column(Seat, name) for name in ("event", "code", "section", "row", "number"))
# An event's seats: a plain layout (S1…Sn, one row), or each section's rows of seats (A-1-1…).
_PLAIN_SEATS = sql.SQL(
    "INSERT INTO {} ({}) SELECT %(event)s, 'S' || n, '', 1, n FROM generate_series(1, %(seats)s) AS n ORDER BY n"
).format(statements.table(Seat), _SEAT_COLUMNS)
_SECTION_SEATS = sql.SQL("""INSERT INTO {} ({}) SELECT %(event)s, s.name || '-' || r || '-' || n, s.name, r, n
FROM unnest(%(sections)s::text[]) WITH ORDINALITY AS s(name, position),
     generate_series(1, %(rows)s) AS r, generate_series(1, %(seats)s) AS n
ORDER BY s.position, r, n""").format(statements.table(Seat), _SEAT_COLUMNS)


def _generate_seats(event: Event, layout: SeatLayout | None) -> None:
    with connection.cursor() as cursor:
        if layout is None:
            cursor.execute(_PLAIN_SEATS.as_string(None), {"event": event.pk, "seats": event.total_seats})
        else:
            sections, rows, seats = list(layout.sections), layout.rows, layout.seats_per_row
            cursor.execute(
                _SECTION_SEATS.as_string(None), {"event": event.pk, "sections": sections, "rows": rows, "seats": seats}
            )


def _locked_event(lock, event_id: int) -> Event:
    event = lock(event_id)
    if event is None:
        raise NotFound(f"Event {event_id} does not exist.")
    return event


def event_update_details(
    *,
    event_id: int,
    actor: User | None,
    now: datetime,
    name: str | None = None,
    event_date: datetime | None = None,
    location: str | None = None,
    hold_minutes: int | None = None,
    queue_enabled: bool | None = None,
    admitted_per_minute: int | None = None,
    admission_window_minutes: int | None = None,
) -> Event:
    """Change an event's name, date, location, hold length or admission queue (on or off, its rate and
    its admission window) (``None``: leave it as it is).

    Only these columns are written, under the event's row lock: the ``confirmed_seats`` counter and
    ``sales_open``, which confirms, cancels and the sales actions move meanwhile, are never written back
    from an earlier read. One ``UPDATED`` audit event lists what changed; nothing changed writes nothing.
    A new ``hold_minutes`` applies to holds granted from now on. A new date must pass
    ``event_date_problem``; an unchanged one (an event already past, say) may stay. Turning the queue
    on gates the holds that come after this commits (they read it under the event's key share); a new
    rate applies from the next admission run; a new window to admissions from then on. Entries still
    waiting when the queue is turned off keep their places for when it is turned on again.
    """
    wanted = {
        "name": name,
        "event_date": event_date,
        "location": location,
        "hold_minutes": hold_minutes,
        "queue_enabled": queue_enabled,
        "admitted_per_minute": admitted_per_minute,
        "admission_window_minutes": admission_window_minutes,
    }
    wanted = {field: value for field, value in wanted.items() if value is not None}
    for field, value, bounds in [
        ("holdMinutes", hold_minutes, HOLD_MINUTES_RANGE),
        ("admittedPerMinute", admitted_per_minute, ADMITTED_PER_MINUTE_RANGE),
        ("admissionWindowMinutes", admission_window_minutes, ADMISSION_WINDOW_RANGE),
    ]:
        if value is not None:
            bounded(value, field, *bounds)
    with transaction.atomic():
        event = _locked_event(locking.lock_event, event_id)
        now = locked_now(now)
        if event_date is not None and event_date != event.event_date:
            problem = event_date_problem(event_date, now=now)
            if problem:
                raise ValidationFailed.for_field("date", problem)
        audit.record_update(event, wanted, actor=actor, now=now)
    return event


def event_sales_set(*, event_id: int, sales_open: bool, actor: User | None, now: datetime) -> Event:
    """Open or close sales. Closing stops new holds, and offers to the waiting list; holds already
    granted may still be confirmed. Opening offers the free seats to the waiting list."""
    with transaction.atomic():
        event = _locked_event(locking.lock_event_sales, event_id)  # FOR UPDATE: waits for the holds in flight
        if event.sales_open == sales_open:
            return event
        now = locked_now(now)
        event.sales_open, event.updated_at = sales_open, now
        event.save(update_fields=["sales_open", "updated_at"])
        states = ("CLOSED", "OPEN") if sales_open else ("OPEN", "CLOSED")
        audit.record(
            subject=event,
            event="SALES_OPENED" if sales_open else "SALES_CLOSED",
            from_state=states[0],
            to_state=states[1],
            actor=actor,
        )
        if sales_open and event.waiting_count:
            waitlist_offer(event_id=event_id, now=now)  # offers wait while sales are closed
    return event


# --- holds ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeatHold:
    """What a seat hold asks for: the named seats, or ``quantity`` best-available ones."""

    event_id: int
    user: User
    actor: User  # who asks: the holder, or an operator for them (exempt from the cap)
    seat_codes: list[str] | None
    quantity: int | None
    request_id: str
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

    model, domain = SeatHoldGroup, "events"
    cap = Cap(
        rule="held_seats_per_user_per_event",
        setting="EVENT_MAX_HELD_SEATS_PER_USER",
        message="You hold {count} seats of this event and ask for {asked}; a user may hold at most {limit} at once.",
        summary="A user holds at most {limit} seats of one event at once.",
        counts=claims.LIVE_HOLDS,
    )

    def hold(self, request: SeatHold, *, now: datetime, actor) -> SeatHoldGroup:
        if request.seat_codes is not None:
            return super().hold(request, now=now, actor=actor)
        for attempt in range(PICK_ATTEMPTS):
            try:
                return super().hold(replace(request, attempt=attempt), now=now, actor=actor)
            except PickAgain:
                continue
        raise SeatsUnavailable(
            f"The seats of event {request.event_id} are selling too fast; try again.",
            details={"requested": request.quantity, "seatCodes": []},
        )

    def limit_for(self, request: SeatHold) -> int | None:
        """The cap a hold is held to: an offer has none (its quantity was held to it when its user joined,
        and it takes no user lock: it runs after the event's lock, ``locking.freed_events_lock_sql``)."""
        return None if request.offer else self.cap.limit_for(request.actor)

    def lock_target(self, request: SeatHold) -> Target:
        holder = request.user.pk if self.limit_for(request) is not None else None  # the cap's lock
        # The admission is read by the same statement (no round trip of its own), when a token is given.
        token = request.queue_token
        admission = (token, request.user.pk) if token and QUEUE_TOKEN.fullmatch(token) else None
        if request.offer:
            # Seats free by their stored rows alone: an offer never expires another hold (it would wait
            # for that hold's row while holding the event's lock), and locks no seat (it waits for none).
            event, seats, (available, adjacent_free) = locking.share_event_lock_free_seats(
                request.event_id,
                quantity=request.count,
                window=request.count + PICK_SLACK,
                free_at=OFFER_FREE_AT,
                skip_locked=False,
                lock_seats=False,
            )
        elif request.seat_codes is not None:
            event, seats = locking.share_event_lock_seats(
                request.event_id, codes=request.seat_codes, taken_at=request.now, holder=holder, admission=admission
            )
            available, adjacent_free = None, False
        else:
            event, seats, (available, adjacent_free) = locking.share_event_lock_free_seats(
                request.event_id,
                quantity=request.count,
                window=request.count + PICK_SLACK,
                free_at=request.now,
                skip_locked=not request.wait_for_seats,
                holder=holder,
                admission=admission,
            )
        if event is None:
            raise NotFound(f"Event {request.event_id} does not exist.")
        return Target(event, seats, available, adjacent_free)

    def _check_sales(self, event: Event, *, now: datetime) -> None:
        """Judged once the event row is shared: a close that committed is seen, one in flight waits."""
        if not event.sales_open:
            raise SalesClosed(f"Sales for event {event.pk} are closed.")
        if event.event_date <= now:
            raise SalesClosed(f"Event {event.pk} has already taken place.")

    def check_target(self, target: Target, request: SeatHold, *, now: datetime) -> None:
        self._check_sales(target.event, now=now)
        if target.event.queue_enabled and not target.event.admitted and not (request.actor.is_staff or request.offer):
            raise NotAdmitted(
                f"Event {target.event.pk} sells through its queue: send X-Queue-Token of your admitted entry "
                f"(join with POST /api/events/{target.event.pk}/queue and poll it until it is ADMITTED)."
                if request.queue_token is None
                else f"This X-Queue-Token is not an admission of yours to event {target.event.pk} (still waiting, "
                "lapsed, or of another user or event).",
                details={"eventId": target.event.pk},
            )
        if target.event.waiting_count and not request.offer:
            raise WaitlistActive(
                f"{target.event.waiting_count} users are waiting for seats of event {target.event.pk}, and seats "
                "that free go to them first: join the waiting list.",
                details={"waitingCount": target.event.waiting_count},
            )
        if request.seat_codes is None:
            assert target.available is not None  # best available: the lock statement counted the free seats
            if target.available < request.count:
                raise SeatsUnavailable(
                    f"Event {target.event.pk} has {target.available} seats available, not {request.count}.",
                    details={"requested": request.count, "available": target.available, "seatCodes": []},
                )
            if len(target.seats) < request.count:
                raise PickAgain  # the free seats are locked by holds in flight
            return
        unknown = sorted(set(request.seat_codes) - {s.code for s in target.seats})
        if unknown:
            raise ValidationFailed(
                f"Event {target.event.pk} has no seats {', '.join(unknown)}.",
                details={"fields": {"seatCodes": [f"Unknown seat codes: {', '.join(unknown)}."]}, "seatCodes": unknown},
            )
        # Taken by the lock statement's snapshot: a fair refusal (it was taken when we asked).
        _refuse_taken(target.event, [s.code for s in target.seats if s.taken])

    def create(self, target: Target, request: SeatHold, *, now: datetime, actor) -> SeatHoldGroup:
        event, best = target.event, request.seat_codes is None
        expires_at = now + timedelta(minutes=event.hold_minutes)
        group_id = uuid.uuid4()
        limit = self.limit_for(request)
        expired, taken, held, picked, codes, adjacent, claimed, contended = (
            HOLD_BEST if best else HOLD_NAMED
        ).fetchone(
            {
                "event": event.pk,
                "seats": [s.pk for s in target.seats],
                "quantity": request.count,
                "group": group_id,
                "user": request.user.pk,
                "limit": limit,
                "actor": None if request.offer else actor.pk,
                "actor_label": OFFER_ACTOR if request.offer else f"user:{actor.pk}",
                "expiry_actor": EXPIRY_ACTOR,
                "now": now,
                "expires_at": expires_at,
                "expires_at_json": json.dumps(expires_at, cls=DjangoJSONEncoder),
                "request_id": request.request_id,
                "occurred_at": timezone.now(),
                "trace_id": current_request_id() or "",
            }
        )
        count_on_commit(HOLDS_EXPIRED, self.domain, amount=expired)
        if taken and request.offer:
            raise PickAgain  # taken since the read of the candidates (an offer locks none)
        by_id = {s.pk: s.code for s in target.seats}
        _refuse_taken(event, [by_id[pk] for pk in taken])
        self.cap.check(count=held, asked=request.count, limit=limit, eventId=event.pk)
        if len(picked) < request.count:
            raise PickAgain  # best available: some candidates were taken after the lock statement's snapshot
        if best and not adjacent and target.adjacent_free and not request.last_attempt:
            raise PickAgain  # adjacent seats are free, but others hold some of them locked: try those again
        if claimed < request.count and request.offer:
            raise PickAgain  # a hold in flight claimed one of its seats first (an offer locks none)
        if claimed < request.count:
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
            user=request.user,
            state=State.HELD,
            seat_count=request.count,
            expires_at=expires_at,
            request_id=request.request_id,
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

    def loaded(self, group: SeatHoldGroup, reads: dict[str, Any], returns: tuple) -> None:
        group.seat_codes, group.waiting_events = list(returns[0]), list(returns[1])

    def after(self, outcome: Outcome[SeatHoldGroup], *, now: datetime) -> None:
        """Seats freed while people wait go to the waiting list, in the statement's transaction (which
        holds the events' locks: ``locking.freed_events_lock_sql``)."""
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


# The seat hold after its locks (``SeatHolds.create``). The sub-statements of one statement share its
# snapshot and do not see each other's writes. ``picked``: the seats named (all of them), or best
# available: among the candidates locked, those free now, the first run of ``quantity`` adjacent seats
# in one row (front sections and rows first), else the first free seats in layout order. ``overdue``
# expires the groups with an overdue claim on a picked seat, whole (all their seats), and ``lapsed`` the
# waiting-list offers among them (a hold runs only while nobody waits: no offer of the seats follows); its UPDATE waits
# for a request holding one of them and skips a group that request moved. ``free`` judges by the
# snapshot, where an overdue hold is free (docs/contract.md §2.2), and reads ``overdue_claims`` so those UPDATEs have
# run before ``claimed`` inserts. When a hold overdue in the snapshot was confirmed meanwhile, the
# unique index refuses the claim: ``contended`` counts such claims, so that refusal is the confirm's
# win, not a backstop. ``held`` counts the seats the user holds live on the event (the cap,
# ``SeatHolds.cap``): read under the holder's lock, taken by the lock statement (none when the cap does
# not apply: ``limit`` is then NULL); ``free`` lets the hold through only within the cap.
_EVENT, _SEAT, _CLAIM, _GROUP, _ENTRY = (
    m._meta.db_table for m in (Event, Seat, SeatClaim, SeatHoldGroup, WaitlistEntry)
)
_AUDIT = AuditEvent._meta.db_table
_AUDIT_COLUMNS = audit.SQL_COLUMNS
_G, _C = SeatHoldGroup, SeatClaim
# The names a seat hold's template uses: ``{g_…}`` a hold group's table and columns, ``{c_…}`` a seat
# claim's, ``{s_…}`` a seat's, ``{w_…}`` a waiting-list entry's.
_NAMES = {
    **statements.names(_G, "g_"),
    **statements.names(_C, "c_"),
    **statements.names(Seat, "s_"),
    **statements.names(WaitlistEntry, "w_"),
    "expired": sql.Literal(State.EXPIRED),
    "held": sql.Literal(State.HELD),
    "active": claims.ACTIVE.sql(_C, "c"),  # a claim in force: its seat is taken
    "overdue_claim": claims.OVERDUE.sql(_C, "c"),
}


def _seat_along(to_state: str) -> Along:
    """What a hold group's transition to ``to_state`` (or an expiry) writes beside the groups
    (``SeatHolds.along``). ``events``: their events' rows, ``FOR NO KEY UPDATE`` in id order, after the
    groups' locks and before they are written (ADR 0001 row 5: ``locking.freed_events_lock_sql``), with
    how many wait (a confirm's or a cancel's moves the booked-seat counter: ``_counted``;
    ``event_confirmed_within_total`` the backstop); a group whose seats free while people wait is written
    only in a transaction (the offer follows it: ``SeatHolds.after``). ``mirrored``: the seat claims follow
    their group; ``entries``: the waiting-list offers the groups were, accepted or lapsed, with their
    audit events. Returns the seat codes of a group written alone and the events to offer seats of."""
    P, to = statements.P, sql.Literal(to_state)
    names = {
        **_NAMES,
        **statements.names(Event, "e_"),
        "confirmed": sql.Literal(State.CONFIRMED),
        "cancelled": sql.Literal(State.CANCELLED),
        "freeing": sql.SQL(", ").join(map(sql.Literal, FREEING_STATES)),
        "offered": sql.Literal(Entry.OFFERED),
        "accepted": sql.Literal(Entry.ACCEPTED),
        "entry_expired": sql.Literal(Entry.EXPIRED),
        "ending": sql.SQL(", ").join(map(sql.Literal, ENTRY_STATE_OF)),
    }
    by_request = sql.SQL("w.group_state = {}").format(to)
    return Along(
        gate=(("events", _counted(to_state, names) if to_state in COUNTED else _freed_events()),),
        holds=sql.SQL(
            "t.to_state IN ({freeing}) "
            "AND EXISTS (SELECT FROM events ev WHERE ev.id = t.event_id AND ev.waiting_count > 0)"
        ).format(**names),
        ctes=(
            (
                "mirrored",
                sql.SQL(
                    "UPDATE {c_table} sc SET {c_state} = m.{g_state} FROM moved m WHERE sc.{c_group} = m.id "
                    "RETURNING sc.{c_seat} AS seat_id"
                ).format(**names),
            ),
            (
                "entries",
                sql.SQL("""UPDATE {w_table} w
    SET {w_state} = CASE WHEN m.{g_state} = {confirmed} THEN {accepted} ELSE {entry_expired} END,
        {w_updated_at} = m.{g_updated_at}
    FROM moved m WHERE w.{w_hold_group} = m.id AND w.{w_state} = {offered} AND m.{g_state} IN ({ending})
    RETURNING w.id, w.{w_event} AS event_id, w.{w_hold_group} AS hold_group_id, w.{w_state} AS state,
              m.{g_state} AS group_state""").format(**names),
            ),
            (
                "entry_events",
                statements.audit_rows(
                    source=sql.SQL("entries w"),
                    occurred_at=P("occurred_at"),
                    actor=sql.SQL("CASE WHEN {} THEN %(actor)s::bigint END").format(by_request),
                    actor_label=sql.SQL("CASE WHEN {} THEN %(actor_label)s ELSE %(expiry_actor)s END").format(
                        by_request
                    ),
                    subject_type=sql.Literal(ENTRY_SUBJECT),
                    subject_id=sql.SQL("w.id::text"),
                    event_type=sql.SQL("w.state"),
                    from_state=sql.Literal(Entry.OFFERED),
                    to_state=sql.SQL("w.state"),
                    metadata=sql.SQL("jsonb_build_object('eventId', w.event_id, 'holdGroupId', w.hold_group_id)"),
                    request_id=P("trace_id"),
                ),
            ),
        ),
        returns=(
            sql.SQL(
                "ARRAY(SELECT s.{s_code} FROM mirrored mc JOIN {s_table} s ON s.id = mc.seat_id "
                "ORDER BY s.{s_section}, s.{s_row}, s.{s_number})"
            ).format(**names),
            _waiting_events(names),
        ),
        batch_returns=(_waiting_events(names),),
    )


# The transitions that move the booked-seat counter, and by how many of the group's seats.
COUNTED: dict[str, sql.SQL] = {State.CONFIRMED: sql.SQL("+"), State.CANCELLED: sql.SQL("-")}


def _counted(to_state: str, names: dict) -> sql.Composable:
    """A confirm's or a cancel's event lock is the counter's ``UPDATE`` itself, by the group's seats when it
    is written (not held for a transaction: ``Along.holds``, judged here on the row's newest version, as
    the ``UPDATE`` reads it): the one access to the event row in the statement. Returns it with how many
    wait."""
    return sql.SQL("""UPDATE {e_table} e
    SET {e_confirmed_seats} = e.{e_confirmed_seats} + CASE
        WHEN t.to_state = {to}
             AND NOT (t.to_state IN ({freeing}) AND e.{e_waiting_count} > 0 AND NOT %(in_transaction)s)
        THEN {sign} t.{g_seat_count} ELSE 0 END
    FROM target t WHERE e.id = t.{g_event} AND t.to_state IS NOT NULL
    RETURNING e.id, e.{e_waiting_count}""").format(**names, to=sql.Literal(to_state), sign=COUNTED[to_state])


def _freed_events() -> sql.Composable:
    """A release's or an expiry's event lock (in id order: an expiry's batch has several events)."""
    return locking.freed_events_lock_sql(sql.SQL("SELECT t.event_id FROM target t WHERE t.to_state IS NOT NULL"))


def _waiting_events(names: dict) -> sql.Composable:
    """The events whose seats a statement freed while people wait: their offers follow it."""
    return sql.SQL(
        "ARRAY(SELECT ev.id FROM events ev WHERE ev.waiting_count > 0 "
        "AND EXISTS (SELECT FROM moved m WHERE m.{g_event} = ev.id AND m.{g_state} IN ({freeing})))"
    ).format(**names)


# The seats named (all of them).
_PICK_NAMED = sql.SQL("SELECT unnest(%(seats)s::bigint[]) AS id")
# Best available: among the candidates locked, those free now, the first run of ``quantity`` adjacent seats in one
# row (front sections and rows first), else the first free seats in layout order.
_PICK_BEST = sql.SQL("""
    WITH free_now AS (
        SELECT s.id, s.{s_section} AS section, s.{s_row} AS row, s.{s_number} AS number,
               s.{s_number} - ROW_NUMBER() OVER (PARTITION BY s.{s_section}, s.{s_row} ORDER BY s.{s_number}) AS run
        FROM {s_table} s
        WHERE s.id = ANY(%(seats)s::bigint[])
          AND NOT EXISTS (SELECT FROM {c_table} c WHERE c.{c_event} = s.{s_event} AND c.{c_seat} = s.id AND {active})
    ), block AS (
        SELECT section, row, run FROM free_now GROUP BY section, row, run
        HAVING COUNT(*) >= %(quantity)s ORDER BY section, row, MIN(number) LIMIT 1
    ), adjacent AS (
        SELECT f.id FROM free_now f JOIN block b ON (b.section, b.row, b.run) = (f.section, f.row, f.run)
        ORDER BY f.number LIMIT %(quantity)s
    )
    SELECT id FROM adjacent
    UNION ALL
    (SELECT id FROM free_now WHERE NOT EXISTS (SELECT FROM adjacent) ORDER BY section, row, number LIMIT %(quantity)s)
""").format(**_NAMES)


def _seat_hold_statement(picked: sql.Composable) -> statements.Statement:
    P = statements.P
    expiry = {"occurred_at": P("occurred_at"), "actor": sql.NULL, "actor_label": P("expiry_actor")}
    return statements.Statement(
        sql.SQL("""
WITH picked AS MATERIALIZED ({picked}
), overdue AS (
    UPDATE {g_table} g SET {g_state} = {expired}, {g_updated_at} = %(now)s
    WHERE {overdue_group} AND g.id IN (
        SELECT c.{c_group} FROM {c_table} c JOIN picked p ON p.id = c.{c_seat} WHERE {overdue_claim})
    RETURNING g.id, g.{g_event} AS event_id
), overdue_claims AS (
    UPDATE {c_table} c SET {c_state} = {expired} FROM overdue o WHERE c.{c_group} = o.id RETURNING c.id
), expired_events AS ({expired_events}
), lapsed AS (
    UPDATE {w_table} w SET {w_state} = {entry_expired}, {w_updated_at} = %(now)s FROM overdue o
    WHERE w.{w_hold_group} = o.id AND w.{w_state} = {offered}
    RETURNING w.id, w.{w_event} AS event_id, w.{w_hold_group} AS hold_group_id
), lapsed_events AS ({lapsed_events}
), taken AS (
    SELECT c.{c_seat} AS seat_id FROM {c_table} c JOIN picked p ON p.id = c.{c_seat} WHERE {active}
), held AS (
    SELECT COALESCE(SUM(g.{g_seat_count}), 0) AS seats FROM {g_table} g
    WHERE %(limit)s::bigint IS NOT NULL AND g.{g_user} = %(user)s AND g.{g_event} = %(event)s AND {counted}
), free AS (
    SELECT FROM (SELECT COUNT(*) FROM overdue_claims) AS after_the_expiry, held
    WHERE NOT EXISTS (SELECT FROM taken) AND (SELECT COUNT(*) FROM picked) = %(quantity)s
      AND (%(limit)s::bigint IS NULL OR held.seats + %(quantity)s <= %(limit)s::bigint)
), created AS (
    INSERT INTO {g_table} ({g_id}, {g_booking_group_id}, {g_event}, {g_user}, {g_state}, {g_seat_count}, {g_expires_at},
                           {g_request_id}, {g_created_at}, {g_updated_at}, {g_confirmed_at}, {g_cancelled_at})
    SELECT %(group)s, NULL, %(event)s, %(user)s, {held}, %(quantity)s, %(expires_at)s, %(request_id)s,
           %(now)s, %(now)s, NULL, NULL
    FROM free
    RETURNING id
), claimed AS (
    INSERT INTO {c_table} ({c_group}, {c_event}, {c_seat}, {c_state}, {c_expires_at})
    SELECT c.id, %(event)s, p.id, {held}, %(expires_at)s FROM created c CROSS JOIN picked p
    ON CONFLICT ({c_seat}) WHERE {blocking} DO NOTHING
    RETURNING {c_seat}
), created_event AS ({created_event}
)
SELECT
    (SELECT COUNT(*) FROM overdue),
    ARRAY(SELECT seat_id FROM taken ORDER BY seat_id),
    (SELECT seats FROM held),
    ARRAY(SELECT id FROM picked ORDER BY id),
    ARRAY(SELECT s.{s_code} FROM picked p JOIN {s_table} s ON s.id = p.id ORDER BY p.id),
    (SELECT COUNT(DISTINCT (s.{s_section}, s.{s_row})) = 1 AND MAX(s.{s_number}) - MIN(s.{s_number}) = COUNT(*) - 1
     FROM picked p JOIN {s_table} s ON s.id = p.id),
    (SELECT COUNT(*) FROM claimed),
    (SELECT COUNT(*) FROM {c_table} c JOIN picked p ON p.id = c.{c_seat}
     WHERE {overdue_claim} AND c.{c_group} NOT IN (SELECT id FROM overdue))
""").format(
            **_NAMES,
            picked=picked,
            overdue_group=claims.OVERDUE.sql(_G, "g"),
            counted=SeatHolds.cap.counted(_G, "g"),
            blocking=claims.BLOCKING.sql(_C),
            entry_expired=sql.Literal(WaitlistEntry.State.EXPIRED),
            offered=sql.Literal(WaitlistEntry.State.OFFERED),
            expired_events=statements.audit_rows(
                source=sql.SQL("overdue o"),
                **expiry,
                subject_type=sql.Literal(HOLD_SUBJECT),
                subject_id=sql.SQL("o.id::text"),
                event_type=sql.Literal(State.EXPIRED),
                from_state=sql.Literal(State.HELD),
                to_state=sql.Literal(State.EXPIRED),
                metadata=sql.SQL("jsonb_build_object('eventId', o.event_id, 'bookingGroupId', NULL)"),
                request_id=P("trace_id"),
            ),
            lapsed_events=statements.audit_rows(
                source=sql.SQL("lapsed w"),
                **expiry,
                subject_type=sql.Literal(ENTRY_SUBJECT),
                subject_id=sql.SQL("w.id::text"),
                event_type=sql.Literal(WaitlistEntry.State.EXPIRED),
                from_state=sql.Literal(WaitlistEntry.State.OFFERED),
                to_state=sql.Literal(WaitlistEntry.State.EXPIRED),
                metadata=sql.SQL("jsonb_build_object('eventId', w.event_id, 'holdGroupId', w.hold_group_id)"),
                request_id=P("trace_id"),
            ),
            created_event=statements.audit_rows(
                source=sql.SQL("created c"),
                occurred_at=P("occurred_at"),
                actor=P("actor"),
                actor_label=P("actor_label"),
                subject_type=sql.Literal(HOLD_SUBJECT),
                subject_id=sql.SQL("c.id::text"),
                event_type=sql.Literal("CREATED"),
                from_state=sql.Literal(""),
                to_state=sql.Literal(State.HELD),
                metadata=sql.SQL("""jsonb_build_object(
               'eventId', %(event)s::bigint,
               'seatCodes', (SELECT jsonb_agg(s.{s_code} ORDER BY s.id) FROM picked p JOIN {s_table} s ON s.id = p.id),
               'expiresAt', %(expires_at_json)s::jsonb)""").format(**_NAMES),
                request_id=P("trace_id"),
            ),
        )
    )


HOLD_NAMED, HOLD_BEST = _seat_hold_statement(_PICK_NAMED), _seat_hold_statement(_PICK_BEST)


SEAT_HOLDS = SeatHolds()


def seat_hold(
    *,
    event_id: int,
    user: User,
    now: datetime,
    seat_codes: list[str] | None = None,
    quantity: int | None = None,
    request_id: str = "",
    actor: User | None = None,
    queue_token: str | None = None,
) -> SeatHoldGroup:
    """Hold the named seats, or ``quantity`` best-available ones, all or nothing, for one user, asked by
    ``actor`` (the user, or an operator for them). While the event's queue is on, ``queue_token`` must
    be an entry of the user admitted now, unless the actor is an operator."""
    if (seat_codes is None) == (quantity is None):
        raise ValidationFailed.for_field("seatCodes", "Give either seatCodes or quantity.")
    count = len(seat_codes) if seat_codes is not None else quantity
    if count is None or not 1 <= count <= MAX_SEATS_PER_HOLD:  # (None: given neither, refused above)
        raise ValidationFailed.for_field("seatCodes", f"Hold 1 to {MAX_SEATS_PER_HOLD} seats at a time.")
    if seat_codes is not None and len(set(seat_codes)) != len(seat_codes):
        raise ValidationFailed.for_field("seatCodes", "A seat code is given twice.")
    actor = actor or user
    request = SeatHold(
        event_id=event_id,
        user=user,
        actor=actor,
        seat_codes=seat_codes,
        quantity=quantity,
        request_id=request_id,
        now=now,
        queue_token=queue_token,
    )
    return SEAT_HOLDS.hold(request, now=now, actor=actor)


def seat_hold_confirm(*, event_id: int, hold_group_id: uuid.UUID, user: User, now: datetime) -> SeatHoldGroup:
    """Turn a live hold into a booking. An overdue hold is expired instead — that commits — and 410."""
    return _hold_transition(event_id, hold_group_id, State.CONFIRMED, action=CONFIRM, user=user, now=now)


def seat_hold_release(*, event_id: int, hold_group_id: uuid.UUID, user: User, now: datetime) -> SeatHoldGroup:
    """Give a live hold back. An overdue hold is already free: it is expired, and the release refused."""
    return _hold_transition(event_id, hold_group_id, State.RELEASED, action=RELEASE, user=user, now=now)


def seat_hold_expire(*, hold_group_id: uuid.UUID, user: User, now: datetime) -> SeatHoldGroup:
    """An operator expires a hold now, overdue or not."""
    return _hold_transition(None, hold_group_id, State.EXPIRED, action=EXPIRE, user=user, now=now)


SEATS_CANCELLED = "SEATS_CANCELLED"  # the audit event of a partial cancel: the booking stays CONFIRMED

# A partial cancel, once the booking's row is locked and the seats checked (``seat_booking_cancel``): the
# seats' claims, the booking's seat count, the event's booked-seat counter (its row lock, the transaction's
# last, ADR 0001 row 5, as a whole cancel takes it) and the audit event, in one statement. The seats freed
# are counted from the claims the statement moved, so the booking and the counter move by the same number.
# Returns how many seats were freed (the caller checked every one under the booking's lock: all of them)
# and the event's waiting count once its lock is held.
PARTIAL_CANCEL = statements.Statement(
    sql.SQL("""
WITH cancelled AS (
    UPDATE {c_table} c SET {c_state} = {cancelled} FROM {s_table} s
    WHERE c.{c_group} = %(group)s AND c.{c_state} = {confirmed} AND s.id = c.{c_seat}
      AND s.{s_code} = ANY(%(codes)s::text[])
    RETURNING s.{s_code} AS code, s.{s_section} AS section, s.{s_row} AS row, s.{s_number} AS number
), freed AS (
    SELECT COUNT(*) AS seats, jsonb_agg(code ORDER BY section, row, number) AS codes FROM cancelled
), regrouped AS (
    UPDATE {g_table} g SET {g_seat_count} = g.{g_seat_count} - f.seats, {g_updated_at} = %(now)s FROM freed f
    WHERE g.id = %(group)s AND f.seats > 0
    RETURNING g.{g_seat_count} AS seats_left
), counted AS (
    UPDATE {e_table} e SET {e_confirmed_seats} = e.{e_confirmed_seats} - f.seats FROM freed f
    WHERE e.id = %(event)s AND f.seats > 0
    RETURNING e.{e_waiting_count} AS waiting
), recorded AS ({recorded}
)
SELECT (SELECT seats FROM freed), (SELECT waiting FROM counted)
""").format(
        **_NAMES,
        **statements.names(Event, "e_"),
        cancelled=sql.Literal(State.CANCELLED),
        confirmed=sql.Literal(State.CONFIRMED),
        recorded=statements.request_events(
            source=sql.SQL("freed f, regrouped g"),
            subject_type=sql.Literal(HOLD_SUBJECT),
            subject_id=sql.SQL("%(group)s::text"),
            event_type=sql.Literal(SEATS_CANCELLED),
            from_state=sql.Literal(State.CONFIRMED),
            to_state=sql.Literal(State.CONFIRMED),
            metadata=sql.SQL("""jsonb_build_object(
               'eventId', %(event)s::bigint, 'bookingGroupId', %(booking)s::text, 'seatCodes', f.codes,
               'seatCount', g.seats_left, 'reason', %(reason)s::text)"""),
        ),
    )
)


def seat_booking_cancel(
    *, booking_group_id: uuid.UUID, user: User, now: datetime, reason: str = "", seat_codes: list[str] | None = None
) -> SeatHoldGroup:
    """Soft-cancel a booking: its rows stay, as CANCELLED, and its seats are free again. ``seat_codes``:
    only those seats (each booked in it now, else 400), the rest stay booked; the last seats cancel the
    booking. Seats freed while people wait are offered to the waiting list, as any freed seat is.

    A whole cancel is one statement in autocommit (``_booking_cancel``). A partial cancel keeps a
    transaction (ADR 0023): the codes are judged against the booking's seats under its lock, with the 400
    naming the unknown ones, then ``PARTIAL_CANCEL`` and the offer; pinned by
    ``test_a_partial_cancel_is_five_round_trips``."""
    what = f"Booking {booking_group_id}"
    if seat_codes is None:
        return _booking_cancel(booking_group_id, user=user, now=now, reason=reason)
    if not seat_codes:
        raise ValidationFailed.for_field("seatCodes", "Name at least one seat to cancel, or leave seatCodes out.")
    if len(set(seat_codes)) != len(seat_codes):
        raise ValidationFailed.for_field("seatCodes", "A seat code is given twice.")
    with transaction.atomic():
        # The booking's seats change only under its lock (a whole cancel takes it too).
        group = locking.lock_claim(SeatHoldGroup, booking_group_id, by="booking_group_id")
        if group is None:
            raise NotFound(f"{what} does not exist.")
        SEAT_HOLDS.policy.require(user, CANCEL, group, what=what)
        if group.state != State.CONFIRMED:
            raise SEAT_HOLDS.refused(group, State.CANCELLED)
        now = locked_now(now)
        booked = selectors.group_seat_codes(group)
        unknown = sorted(set(seat_codes) - set(booked))
        if unknown:
            raise ValidationFailed(
                f"Seats {', '.join(unknown)} are not booked in {what}.",
                details={
                    "fields": {"seatCodes": [f"Not booked in this booking: {', '.join(unknown)}."]},
                    "seatCodes": unknown,
                },
            )
        if len(seat_codes) == len(booked):  # its last seats: the booking is cancelled, whole
            return _booking_cancel(booking_group_id, user=user, now=now, reason=reason)
        with _counter_backstop(group.event_id):
            freed, waiting = PARTIAL_CANCEL.fetchone(
                {
                    "group": group.pk,
                    "booking": str(group.booking_group_id),
                    "event": group.event_id,
                    "codes": seat_codes,
                    "now": now,
                    "reason": reason,
                    "occurred_at": timezone.now(),
                    "actor": user.pk,
                    "actor_label": f"user:{user.pk}",
                    "trace_id": current_request_id() or "",
                }
            )
        if freed != len(seat_codes):  # checked under the booking's lock: a lock is missing
            raise RuntimeError(f"the seats of booking {booking_group_id} changed under its lock")
        if waiting:
            waitlist_offer(event_id=group.event_id, now=now)  # the statement holds the event's lock
        group.seat_count, group.updated_at = group.seat_count - freed, now
        group.seat_codes = [code for code in booked if code not in seat_codes]
    return group


def _booking_cancel(booking_group_id: uuid.UUID, *, user: User, now: datetime, reason: str) -> SeatHoldGroup:
    """A whole booking cancelled: one statement (``SeatHolds.transition``), in autocommit unless its seats
    free while people wait (then in a transaction, with the offer)."""
    return SEAT_HOLDS.transition(
        claim_id=booking_group_id,
        by="booking_group_id",
        what=f"Booking {booking_group_id}",
        to_state=State.CANCELLED,
        action=CANCEL,
        user=user,
        now=now,
        metadata={"reason": reason},
        params={"event": None},
    )


def _hold_transition(event_id: int | None, hold_group_id: uuid.UUID, to_state: str, **kwargs) -> SeatHoldGroup:
    """``event_id``: the event the request names (None: any), checked against the hold's. A missing
    event is 404 before the hold's own refusals (404, 403), as if asked first: that is asked only once
    the request is refused, so a transition that goes through never pays for it."""

    def event_missing() -> bool:
        return event_id is not None and not Event.objects.filter(pk=event_id).exists()

    def same_event(group: SeatHoldGroup) -> None:
        if event_id is not None and group.event_id != event_id:
            if event_missing():
                raise NotFound(f"Event {event_id} does not exist.")
            raise EventMismatch(
                f"Hold {hold_group_id} belongs to event {group.event_id}, not {event_id}.",
                details={"eventId": group.event_id},
            )

    try:
        return SEAT_HOLDS.transition(
            claim_id=hold_group_id,
            what=f"Hold {hold_group_id}",
            to_state=to_state,
            check=same_event,
            params={"event": event_id, "booking_group": uuid.uuid4()},
            **kwargs,
        )
    except (NotFound, NotOwner):
        if event_missing():
            raise NotFound(f"Event {event_id} does not exist.") from None
        raise


def seat_holds_expire_due(*, now: datetime, batch_size: int | None = None) -> int:
    """Flip every hold group overdue at ``now`` to EXPIRED, one audit event each (the beat job)."""
    return SEAT_HOLDS.expire_due(now=now, batch_size=batch_size)


# --- the waiting list (docs/contract.md §5.8, docs/decisions/0016-waiting-list.md) --------------------
#
# The event's row lock (``FOR NO KEY UPDATE``) serializes every change of its WAITING entries: a join, a
# leave and an offer each take it (a transition that frees seats takes it in its own statement:
# ``locking.freed_events_lock_sql``), and the entries themselves are read under it, never locked. An OFFERED
# entry changes with its hold group, in the group's own statement (``_seat_along``'s ``entries``,
# ``HOLD_NAMED``'s and ``HOLD_BEST``'s ``lapsed``), under the group's row lock.


def waitlist_entry_subject(entry: WaitlistEntry) -> audit.Subject:
    return audit.Subject(type=ENTRY_SUBJECT, id=entry.pk)


def waitlist_position(entry: WaitlistEntry) -> int | None:
    """Where a WAITING entry stands (1: next to be offered seats), else None: the WAITING entries of its
    event up to it, counted on the partial index ``waitlist_entry_waiting_idx`` (as many rows as are ahead)."""
    if entry.state != Entry.WAITING:
        return None
    return WaitlistEntry.objects.filter(event_id=entry.event_id, state=Entry.WAITING, id__lte=entry.pk).count()


# A join, under the event's lock (its ``waiting_count`` and seat totals read by that lock, as parameters):
# ``live``, the user's entry on the list already, if any; ``free``, the seats free now, only while nobody
# waits (the live holds on ``seat_claim_held_idx``); ``entry``, the new entry, unless one of those refuses
# it; the event's waiting counter; its audit event. Returns the entry, or what refused it.
_JOIN_FIELDS = [f for f in WaitlistEntry._meta.concrete_fields if not f.primary_key]
_JOIN_VALUES = {
    "event": statements.P("event"),
    "user": statements.P("user"),
    "quantity": statements.P("quantity"),
    "state": sql.Literal(Entry.WAITING),
    "hold_group": sql.NULL,
    "offer_expires_at": sql.NULL,
    "request_id": statements.P("request_id"),
    "created_at": statements.P("now"),
    "updated_at": statements.P("now"),
}
WAITLIST_JOIN = statements.Statement(
    sql.SQL("""
WITH live AS (
    SELECT w.{w_id} AS id, w.{w_state} AS state FROM {w_table} w
    WHERE w.{w_event} = %(event)s AND w.{w_user} = %(user)s AND w.{w_state} IN ({live_states}) LIMIT 1
), free AS (
    SELECT %(total)s - %(confirmed)s - (SELECT count(*) FROM {c_table} c WHERE c.{c_event} = %(event)s AND {live_hold})
        AS seats
    WHERE %(waiting)s = 0
), entry AS (
    INSERT INTO {w_table} ({columns}) SELECT {values}
    WHERE NOT EXISTS (SELECT FROM live) AND NOT EXISTS (SELECT FROM free WHERE seats >= %(quantity)s)
    RETURNING {w_id}
), counted AS (
    UPDATE {e_table} SET {e_waiting_count} = {e_waiting_count} + 1
    WHERE {e_id} = %(event)s AND EXISTS (SELECT FROM entry)
), recorded AS ({recorded})
SELECT (SELECT id FROM entry), (SELECT id FROM live), (SELECT state FROM live), (SELECT seats FROM free)""").format(
        live_states=sql.SQL(", ").join(map(sql.Literal, WaitlistEntry.LIVE_STATES)),
        live_hold=claims.LIVE_HOLDS.sql(_C, "c"),
        columns=sql.SQL(", ").join(claims.column(WaitlistEntry, f.name) for f in _JOIN_FIELDS),
        values=sql.SQL(", ").join(_JOIN_VALUES[f.name] for f in _JOIN_FIELDS),
        e_table=statements.table(Event),
        e_waiting_count=claims.column(Event, "waiting_count"),
        e_id=claims.column(Event, "id"),
        recorded=statements.request_events(
            source=sql.Identifier("entry"),
            subject_type=sql.Literal(ENTRY_SUBJECT),
            subject_id=sql.SQL("id::text"),
            event_type=sql.Literal("CREATED"),
            from_state=sql.Literal(""),
            to_state=sql.Literal(Entry.WAITING),
            metadata=sql.SQL("jsonb_build_object('eventId', %(event)s::bigint, 'quantity', %(quantity)s::bigint)"),
        ),
        **_NAMES,
    )
)


def waitlist_join(*, event_id: int, user: User, quantity: int, now: datetime, request_id: str = "") -> WaitlistEntry:
    """Put ``user`` on the event's waiting list for ``quantity`` seats (at the end: the order is the
    entries' ids). Refused when the list is off, sales are closed, ``quantity`` is over the cap on held
    seats, the user is on the list already, or that many seats are free now and nobody waits (hold them)."""
    limit = SEAT_HOLDS.cap.limit_for(user)
    if not 1 <= quantity <= MAX_SEATS_PER_HOLD:
        raise ValidationFailed.for_field("quantity", f"Wait for 1 to {MAX_SEATS_PER_HOLD} seats.")
    SEAT_HOLDS.cap.check(count=0, asked=quantity, limit=limit, eventId=event_id)
    try:
        with transaction.atomic():
            event = _locked_event(locking.lock_event, event_id)
            now = locked_now(now)
            if not event.waitlist_enabled:
                raise WaitlistClosed(f"The waiting list of event {event_id} is closed.")
            SEAT_HOLDS._check_sales(event, now=now)
            entry_id, live_id, live_state, free = WAITLIST_JOIN.fetchone(
                {
                    "event": event_id,
                    "user": user.pk,
                    "quantity": quantity,
                    "request_id": request_id,
                    "now": now,
                    "waiting": event.waiting_count,
                    "total": event.total_seats,
                    "confirmed": event.confirmed_seats,
                    "occurred_at": timezone.now(),
                    "actor": user.pk,
                    "actor_label": f"user:{user.pk}",
                    "trace_id": current_request_id() or "",
                }
            )
            if live_id is not None:
                raise _already_waiting(WaitlistEntry(pk=live_id, event_id=event_id, state=live_state))
            if entry_id is None:
                raise SeatsAvailable(
                    f"Event {event_id} has {free} seats available: hold them instead.",
                    details={"requested": quantity, "available": free},
                )
            entry = WaitlistEntry(
                pk=entry_id,
                event=event,
                user=user,
                quantity=quantity,
                state=Entry.WAITING,
                request_id=request_id,
                created_at=now,
                updated_at=now,
            )
    except IntegrityError:  # the backstop, waitlist_entry_one_live_per_user_per_event (the lock decides first)
        CONSTRAINT_BACKSTOPS.labels("waitlist_entry_one_live_per_user_per_event").inc()
        live = WaitlistEntry.objects.filter(event_id=event_id, user=user, state__in=WaitlistEntry.LIVE_STATES).first()
        if live is None:
            raise
        raise _already_waiting(live) from None
    entry.position = event.waiting_count + 1  # read under the lock: everyone WAITING is ahead
    return entry


def _already_waiting(entry: WaitlistEntry) -> AlreadyWaiting:
    return AlreadyWaiting(
        f"You are on the waiting list of event {entry.event_id} already (entry {entry.pk}, {entry.state}).",
        details={"entryId": entry.pk, "state": entry.state},
    )


_W_ATTNAMES = [f.attname for f in WaitlistEntry._meta.concrete_fields]
# An entry of the event's list and whether it is the head (no WAITING entry before it), under the event's lock.
_WAITLIST_ENTRY = statements.Statement(
    sql.SQL("""
SELECT {entry}, NOT EXISTS (SELECT FROM {w_table} h WHERE h.{w_event} = w.{w_event} AND h.{w_state} = {waiting}
                                                     AND h.{w_id} < w.{w_id})
FROM {w_table} w WHERE w.{w_id} = %(entry)s AND w.{w_event} = %(event)s""").format(
        entry=sql.SQL(", ").join(
            claims.column(WaitlistEntry, f.name, "w") for f in WaitlistEntry._meta.concrete_fields
        ),
        waiting=sql.Literal(Entry.WAITING),
        **_NAMES,
    )
)
# A WAITING entry leaves: the entry, the event's waiting counter, its audit event.
WAITLIST_LEAVE = statements.Statement(
    sql.SQL("""
WITH left_list AS (
    UPDATE {w_table} SET {w_state} = {left}, {w_updated_at} = %(now)s
    WHERE {w_id} = %(entry)s AND {w_state} = {waiting} RETURNING {w_id}
), counted AS (
    UPDATE {e_table} SET {e_waiting_count} = {e_waiting_count} - 1
    WHERE {e_id} = %(event)s AND EXISTS (SELECT FROM left_list)
), recorded AS ({recorded})
SELECT COUNT(*) FROM left_list""").format(
        left=sql.Literal(Entry.LEFT),
        waiting=sql.Literal(Entry.WAITING),
        e_table=statements.table(Event),
        e_waiting_count=claims.column(Event, "waiting_count"),
        e_id=claims.column(Event, "id"),
        recorded=statements.request_events(
            source=sql.Identifier("left_list"),
            subject_type=sql.Literal(ENTRY_SUBJECT),
            subject_id=sql.SQL("id::text"),
            event_type=sql.Literal(Entry.LEFT),
            from_state=sql.Literal(Entry.WAITING),
            to_state=sql.Literal(Entry.LEFT),
            metadata=sql.SQL("jsonb_build_object('eventId', %(event)s::bigint)"),
        ),
        **_NAMES,
    )
)


def waitlist_leave(*, event_id: int, entry_id: int, user: User, now: datetime) -> WaitlistEntry:
    """Take a WAITING entry off the list (its user leaves, or an operator removes it). The entries behind
    move up; when it was the head, the next may fit the seats free now, and is offered them."""
    with transaction.atomic():
        event = _locked_event(locking.lock_event, event_id)
        row = _WAITLIST_ENTRY.fetchone({"entry": entry_id, "event": event_id})
        if row is None:
            raise NotFound(f"Waiting-list entry {entry_id} of event {event_id} does not exist.")
        entry, was_head = WaitlistEntry.from_db(connection.alias, _W_ATTNAMES, row[:-1]), row[-1]
        SEAT_HOLDS.policy.require_owner(user, entry.user_id, what=f"Waiting-list entry {entry_id}")
        if entry.state != Entry.WAITING:
            raise EntryNotWaiting(
                f"Waiting-list entry {entry_id} is {entry.state}: only a waiting entry leaves the list.",
                details={"state": entry.state},
            )
        now = locked_now(now)
        [(moved,)] = WAITLIST_LEAVE.fetchall(
            {
                "entry": entry_id,
                "event": event_id,
                "now": now,
                "occurred_at": timezone.now(),
                "actor": user.pk,
                "actor_label": f"user:{user.pk}",
                "trace_id": current_request_id() or "",
            }
        )
        if not moved:  # under the event's lock a WAITING entry cannot change: a lock is missing
            raise RuntimeError(f"waiting-list entry {entry_id} changed under its event's lock")
        entry.state, entry.updated_at = Entry.LEFT, now
        if was_head and event.waiting_count > 1:
            waitlist_offer(event_id=event_id, now=now)
    return entry


def waitlist_set(*, event_id: int, enabled: bool, actor: User | None, now: datetime) -> Event:
    """Turn the event's waiting list on or off. Off, nobody joins; the entries on it keep their place
    and are still offered the seats that free (an operator removes them to end that)."""
    with transaction.atomic():
        event = _locked_event(locking.lock_event, event_id)
        audit.record_update(event, {"waitlist_enabled": enabled}, actor=actor, now=locked_now(now))
    return event


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
            request_id="",
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
