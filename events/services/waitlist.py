"""The event's waiting list (ADR 0016): join, leave, the switch; its offers are holds (holds.py)."""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from psycopg import sql

from core import claims, statements
from core.audit import services as audit
from core.errors import NotFound, ValidationFailed
from core.expiry import locked_now
from core.metrics import CONSTRAINT_BACKSTOPS
from core.middleware import current_request_id
from core.organisations import access
from core.organisations.roles import Role
from events import locks
from events.models import Event, WaitlistEntry
from events.services.events import _locked_event, _managed_event
from events.services.hold_statement import _C, _NAMES
from events.services.holds import SEAT_HOLDS, event_organisation, waitlist_offer
from events.services.rules import (
    ENTRY_SUBJECT,
    MAX_SEATS_PER_HOLD,
    AlreadyWaiting,
    Entry,
    EntryNotWaiting,
    SeatsAvailable,
    WaitlistClosed,
)
from web.accounts.models import User


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
    "idempotency_key": statements.P("idempotency_key"),
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


def waitlist_join(
    *, event_id: int, user: User, quantity: int, now: datetime, idempotency_key: str = ""
) -> WaitlistEntry:
    """Put ``user`` on the event's waiting list for ``quantity`` seats (at the end: the order is the
    entries' ids). Refused when the list is off, sales are closed, ``quantity`` is over the cap on held
    seats, the user is on the list already, or that many seats are free now and nobody waits (hold them)."""
    organisation_id = access.acting_in(user, owner_id=user.pk, organisation=lambda: event_organisation(event_id))
    limit = SEAT_HOLDS.cap.limit_for(user, organisation_id)
    if not 1 <= quantity <= MAX_SEATS_PER_HOLD:
        raise ValidationFailed.for_field("quantity", f"Wait for 1 to {MAX_SEATS_PER_HOLD} seats.")
    SEAT_HOLDS.cap.check(count=0, asked=quantity, limit=limit, eventId=event_id)
    try:
        with transaction.atomic():
            event = _locked_event(locks.lock_event, event_id)
            now = locked_now(now)
            if not event.waitlist_enabled:
                raise WaitlistClosed(f"The waiting list of event {event_id} is closed.")
            SEAT_HOLDS.check_sales(event.pk, sales_open=event.sales_open, event_date=event.event_date, now=now)
            entry_id, live_id, live_state, free = WAITLIST_JOIN.fetchone(
                {
                    "event": event_id,
                    "user": user.pk,
                    "quantity": quantity,
                    "idempotency_key": idempotency_key,
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
                idempotency_key=idempotency_key,
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
    """Take a WAITING entry off the list (its user leaves, or a manager of the event's organisation removes
    it, their membership read under its lock: ADR 0025, item 7). The entries behind move up; when it was
    the head, the next may fit the seats free now, and is offered them."""
    with transaction.atomic():
        event = _locked_event(locks.lock_event, event_id)
        row = _WAITLIST_ENTRY.fetchone({"entry": entry_id, "event": event_id})
        if row is None:
            raise NotFound(f"Waiting-list entry {entry_id} of event {event_id} does not exist.")
        entry, was_head = WaitlistEntry.from_db(connection.alias, _W_ATTNAMES, row[:-1]), row[-1]
        what = f"Waiting-list entry {entry_id}"
        SEAT_HOLDS.policy.require_owner(
            user, entry.user_id, lambda: event.organisation_id, what=what, role=Role.MANAGER
        )
        SEAT_HOLDS.policy.require_member(
            user, entry.user_id, lambda: event.organisation_id, what=what, role=Role.MANAGER
        )
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
        event = _managed_event(locks.lock_event, event_id, actor)
        audit.record_update(event, {"waitlist_enabled": enabled}, actor=actor, now=locked_now(now))
    return event
