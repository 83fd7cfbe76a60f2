"""Booking seats of a published slot, one statement in autocommit (``SlotBookings.decide``,
docs/decisions/0022-one-statement-holds.md), and the slot bookings' services: book, confirm, cancel, expire."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError
from psycopg import sql

from core import claims, locking, statements
from core.engine import EXPIRY_ACTOR
from core.errors import NotFound, ValidationFailed
from core.metrics import HOLDS_EXPIRED, count_on_commit
from core.organisations import access
from core.policy import CANCEL, CONFIRM, EXPIRE
from core.statements import P
from slots import locks
from slots.models import Slot, SlotBooking
from slots.services.lifecycle import (
    _B,
    _CREATED_EVENT,
    _NAMES,
    _S,
    SlotBookingLifecycle,
    _backstop_refusal,
    _check_bookable,
    _check_guest_limits,
    _check_no_clash,
    _check_seats,
    _event_params,
    _written,
    expire_overdue,
    guest_moved,
)
from slots.services.rules import SlotFull, SlotUnavailable, Status, cancellation_window, hold_minutes_default
from web.accounts.models import User


@dataclass(frozen=True)
class SlotBookingRequest:
    slot_id: int
    guest: User
    seats: int
    hold: bool
    hold_minutes: int | None
    now: datetime  # when it was asked: the snapshot's reads judge expiry by it
    metadata: dict = field(default_factory=dict)
    idempotency_key: str = ""


class SlotBookings(SlotBookingLifecycle):
    """A booking takes ``seats`` of one slot, CONFIRMED at once or as a PENDING hold.

    The booking is one statement in autocommit (``decide``, ``book_statement``; docs/decisions/
    0022-one-statement-holds.md): it reads the slot and the guest's bookings from its snapshot, takes the
    guest's lock (``locking.claim_lock_sql``: the cap, one booking per host, never two at once) and the
    slot's (``locks.slot_claim_lock_sql``: its seats), expires the slot's overdue holds, moves ``booked``,
    inserts the booking and its events, and moves the guest's claim sequence. When a write of the same
    guest committed after the snapshot (``locking.fresh_sql``), its reads of the guest's bookings may be
    stale: it writes nothing and the engine runs it again in a transaction (``hold_decided``). A
    transition is one statement in autocommit (ADR 0023): it locks the guest (for a confirm), the slot
    and the booking (``lock_before``), and writes the booking, its audit event and the slot's counter
    (``along``).
    """

    one_statement = True

    def decide(self, ask: SlotBookingRequest, *, now: datetime, actor) -> SlotBooking | None:
        status = Status.PENDING if ask.hold else Status.CONFIRMED
        expires_at = now + timedelta(minutes=ask.hold_minutes or hold_minutes_default()) if ask.hold else None
        params = {
            "slot": ask.slot_id,
            "guest": ask.guest.pk,
            "seats": ask.seats,
            "max_active": self.cap.limit,
            "status": status,
            "expires_at": expires_at,
            "booking_metadata": json.dumps(ask.metadata, cls=DjangoJSONEncoder),
            "booking_idempotency_key": ask.idempotency_key,
            "now": now,
            "expiry_actor": EXPIRY_ACTOR,
            **_event_params(actor),
            "metadata": json.dumps(
                {"slotId": ask.slot_id, "seats": ask.seats, "expiresAt": expires_at}, cls=DjangoJSONEncoder
            ),
        }
        try:
            row = book_statement().fetchone(params)
        except IntegrityError as error:  # a backstop refused the statement: it wrote nothing
            raise _backstop_refusal(error, slot=Slot(pk=ask.slot_id), seats=ask.seats) from None
        n = len(_SLOT_FIELDS)
        if row[0] is None:
            raise NotFound(f"Slot {ask.slot_id} does not exist.")
        slot = statements.from_row(Slot, row[:n])
        active, with_host, clash, overdue_seats, locked, fresh, unchanged, room, *written = row[n:]
        expired, remaining, booked, booking_id = written
        # Refused by the snapshot: by what was true when it was asked (it took no lock and wrote nothing).
        _check_bookable(slot, guest=ask.guest.pk, now=now)
        _check_guest_limits(host_id=slot.host_id, active=active, with_host=with_host)
        if clash is not None:  # JSON: its times are ISO 8601 strings
            clash = json.loads(clash) if isinstance(clash, str) else clash
            _check_no_clash(clash["id"], datetime.fromisoformat(clash["start"]), datetime.fromisoformat(clash["end"]))
        _check_seats(slot, seats=ask.seats, freed=overdue_seats)
        if locked != Slot.Status.AVAILABLE:  # cancelled by its host after the snapshot: the locked row says so
            raise SlotUnavailable(f"Slot {slot.pk} was cancelled by its host.", details={"slotId": slot.pk})
        if not fresh:
            return None  # the guest's bookings may have changed since the snapshot: it wrote nothing
        if not unchanged:  # the slot was written after the snapshot (another booking): it wrote nothing
            if room:
                return None  # the seats might fit: decided by a statement whose snapshot has the counter
            raise SlotFull(slot_id=slot.pk, seats=ask.seats, remaining=remaining)
        count_on_commit(HOLDS_EXPIRED, self.domain, amount=expired)
        if booking_id is None:
            raise SlotFull(slot_id=slot.pk, seats=ask.seats, remaining=remaining)
        slot.booked = booked
        return _written(
            booking_id,
            slot,
            now=now,
            guest=ask.guest,
            seats=ask.seats,
            status=status,
            expires_at=expires_at,
            metadata=ask.metadata,
            idempotency_key=ask.idempotency_key,
        )


_SLOT_FIELDS = _S._meta.concrete_fields


def _guest_reads() -> dict[str, sql.Composable]:
    """What a booking reads of its guest (``%(guest)s``) at ``%(now)s`` for the slot ``s``, from its snapshot:
    the bookings the cap counts (``SlotBookings.cap.counts``), the active ones with the slot's host, the
    first active one overlapping the slot (JSON ``{id, start, end}``), and the slot's overdue seats."""
    b, bs = statements.names(_B, "", "b"), statements.names(_S, "", "bs")
    s = {f.name: claims.column(_S, f.name, "s") for f in _SLOT_FIELDS}
    guests = sql.SQL("FROM {} b WHERE {} = %(guest)s AND {}").format(b["table"], b["guest"], claims.ACTIVE.sql(_B, "b"))
    return {
        "guest_active": sql.SQL("(SELECT count(*) FROM {} b WHERE {} = %(guest)s AND {})").format(
            b["table"], b["guest"], SlotBookings.cap.counted(_B, "b")
        ),
        "guest_with_host": sql.SQL(
            "(SELECT count(*) {} AND EXISTS (SELECT FROM {} bs WHERE {} = {} AND {} = {}))"
        ).format(guests, bs["table"], bs["id"], b["slot"], bs["host"], s["host"]),
        "guest_clash": sql.SQL("(SELECT jsonb_build_object('id', {}, 'start', {}, 'end', {}) {} {} LIMIT 1)").format(
            b["id"],
            b["start"],
            b["end"],
            guests,
            sql.SQL("AND {} < {} AND {} > {} ORDER BY {}").format(
                b["start"], s["end"], b["end"], s["start"], b["start"]
            ),
        ),
        "overdue_seats": sql.SQL("COALESCE((SELECT sum({}) FROM {} b WHERE {} = {} AND {}), 0)").format(
            b["seats"], b["table"], b["slot"], s["id"], claims.OVERDUE.sql(_B, "b")
        ),
    }


@functools.cache
def _book_statement(
    claim_lock: Callable[..., sql.Composable],
    slot_lock: Callable[..., sql.Composable],
    fresh: Callable[..., sql.Composable],
) -> statements.Statement:
    """The booking's one statement, composed once per (guest lock, slot lock, freshness check): the seams a
    race control replaces (``locking.claim_lock_sql``, ``locks.slot_claim_lock_sql``, ``locking.fresh_sql``)."""
    reads = _guest_reads()
    seq = sql.Identifier(locking.CLAIM_SEQ)
    return statements.Statement(
        sql.SQL("""
WITH seen AS MATERIALIZED (
    SELECT {slot_columns}, {reads}, {seen_guest} AS guest_seq, s.xmin AS version FROM {s_table} s WHERE s.id = %(slot)s
), wanted AS (
    SELECT FROM seen
    WHERE {s_kind} = {published} AND {s_status} = {available} AND {s_host} <> %(guest)s AND {s_start} > %(now)s
      AND guest_with_host = 0 AND guest_active < %(max_active)s AND guest_clash IS NULL
      AND {s_capacity} - {s_booked} + overdue_seats >= %(seats)s
), guest AS MATERIALIZED ({guest_lock}
), slot AS MATERIALIZED ({slot_lock}
), judged AS MATERIALIZED (
    SELECT {fresh} AS fresh, slot.{s_status} = {available} AS available, slot.version = seen.version AS unchanged,
           slot.{s_capacity} - slot.{s_booked} + seen.overdue_seats >= %(seats)s AS room
    FROM seen, guest, slot
), go AS (
    SELECT FROM judged WHERE fresh AND available AND unchanged
), {expire_overdue}, fits AS (
    SELECT FROM slot, freed
    WHERE EXISTS (SELECT FROM go) AND slot.{s_capacity} - slot.{s_booked} + freed.seats >= %(seats)s
), moves AS (
    SELECT freed.seats AS freed, CASE WHEN EXISTS (SELECT FROM fits) THEN %(seats)s ELSE 0 END AS taken FROM freed
), taken AS (
    UPDATE {s_table} s SET {s_booked} = s.{s_booked} - m.freed + m.taken
    FROM moves m
    WHERE s.id = %(slot)s AND (m.freed > 0 OR m.taken > 0)
    RETURNING m.taken
), created AS (
    INSERT INTO {b_table} ({b_slot}, {b_guest}, {b_start}, {b_end}, {b_seats}, {b_status}, {b_expires_at}, {b_reason},
                           {b_metadata}, {b_idempotency_key}, {b_created_at}, {b_updated_at})
    SELECT %(slot)s, %(guest)s, seen.{s_start}, seen.{s_end}, %(seats)s, %(status)s, %(expires_at)s, '',
           %(booking_metadata)s::jsonb, %(booking_idempotency_key)s, %(now)s, %(now)s
    FROM taken, seen
    WHERE taken.taken > 0
    RETURNING id
), created_event AS ({created_event}
), guest_moved AS ({guest_moved}
)
SELECT {seen_columns}, seen.guest_active, seen.guest_with_host, seen.guest_clash, seen.overdue_seats,
       (SELECT {s_status} FROM slot),
       COALESCE((SELECT fresh FROM judged), false),
       COALESCE((SELECT unchanged FROM judged), false),
       COALESCE((SELECT room FROM judged), false),
       (SELECT count(*) FROM overdue),
       (SELECT slot.{s_capacity} - slot.{s_booked} + freed.seats FROM slot, freed),
       (SELECT slot.{s_booked} - freed.seats + %(seats)s FROM slot, freed),
       (SELECT id FROM created)
FROM (SELECT) AS one LEFT JOIN seen ON true
""").format(
            **_NAMES,
            slot_columns=sql.SQL(", ").join(claims.column(_S, f.name, "s") for f in _SLOT_FIELDS),
            seen_columns=sql.SQL(", ").join(claims.column(_S, f.name, "seen") for f in _SLOT_FIELDS),
            reads=sql.SQL(", ").join(sql.SQL("{} AS {}").format(q, sql.Identifier(n)) for n, q in reads.items()),
            seen_guest=locking.seen_sql(User, P("guest")),
            published=sql.Literal(Slot.Kind.PUBLISHED),
            available=sql.Literal(Slot.Status.AVAILABLE),
            # Order 1, then 3: the slot's lock reads the guest's, so that lock is held first; the overdue holds
            # (4) after both (their UPDATE reads ``go``).
            guest_lock=claim_lock(User, P("guest"), lock_before=sql.SQL("EXISTS (SELECT FROM wanted)")),
            slot_lock=slot_lock(
                P("slot"), lock_before=sql.SQL("EXISTS (SELECT FROM guest)"), returning=("status", "capacity", "booked")
            ),
            fresh=fresh(sql.SQL("seen.guest_seq"), sql.SQL("guest.{}").format(seq)),
            expire_overdue=expire_overdue(sql.SQL("EXISTS (SELECT FROM go)")),
            created_event=_CREATED_EVENT,
            guest_moved=guest_moved(P("guest"), when="created"),
        )
    )


def book_statement() -> statements.Statement:
    """The booking (``SlotBookings.decide``), composed once.

    Its sub-statements share one snapshot, taken when it starts. ``seen`` reads from it the slot, the guest's
    claim sequence, the guest's bookings the rules count (``_guest_reads``) and the slot's overdue seats. A
    booking those refuse was refused by what was true when it was asked, and takes no lock (``wanted``).
    Otherwise ``guest`` takes the guest's lock and ``slot`` the slot's, after it, each returning its row's
    newest version. ``judged``: the guest's bookings as the snapshot has them are the truth when no write
    that raises them committed under the guest's lock after the snapshot (``locking.fresh_sql``: every such
    write moves the guest's claim sequence, ``lifecycle.guest_moved``); the slot is still bookable by its
    newest row; and the slot's row is the version the snapshot read (``unchanged``: its ``xmin``). Only then
    (``go``) does anything else run:
    ``overdue`` expires the slot's overdue holds with their events (its UPDATE re-reads each, so ``freed`` is
    what it gave back); ``fits`` judges the seats by the counter of the locked row plus ``freed``; ``taken``
    moves the counter by both (``slot_booked_within_capacity`` stays the backstop: it would refuse the
    statement, and ``decide`` counts it); ``created`` inserts the booking once ``taken`` took the seats
    (``slotbooking_guest_no_overlap`` the guest's backstop), ``created_event`` records it and ``guest_moved``
    moves the guest's claim sequence.

    Why ``unchanged``: an ``UPDATE`` of a row that changed after its snapshot computes the new row from the
    version its snapshot sees and checks the table's constraints on it *before* it finds the newer version
    and computes again from that one (EvalPlanQual): ``booked`` + the seats, from a counter another booking
    has moved since, can fail ``slot_booked_within_capacity`` though the newest counter has room. So a
    booking whose slot was written after its snapshot writes nothing: it is refused at once when the seats
    cannot fit even with every hold overdue in its snapshot given back (``room``: what the losers of a rush
    read), and otherwise decided again in a transaction (``hold_decided``)."""
    return _book_statement(locking.claim_lock_sql, locks.slot_claim_lock_sql, locking.fresh_sql)


book_statement()  # composed at import


SLOT_BOOKINGS = SlotBookings()


def slot_organisation(slot_id: int) -> int | None:
    """The organisation of slot ``slot_id``; None when there is no such slot."""
    return access.organisation_of(Slot, slot_id)


def slot_booking_create(
    *,
    slot_id: int,
    guest: User,
    now: datetime,
    seats: int = 1,
    hold: bool = False,
    hold_minutes: int | None = None,
    metadata: dict | None = None,
    idempotency_key: str = "",
    actor: User | None = None,
) -> SlotBooking:
    """Book ``seats`` of a slot: CONFIRMED at once, or with ``hold`` a PENDING hold to confirm before
    it expires. Locks the guest row, then the slot row."""
    if seats < 1:
        raise ValidationFailed.for_field("seats", "Must be at least 1.")
    if actor is not None and actor.pk != guest.pk:  # an operator for a guest: inside their organisations only
        access.acting_in(actor, owner_id=guest.pk, organisation=lambda: slot_organisation(slot_id))
    ask = SlotBookingRequest(
        slot_id=slot_id,
        guest=guest,
        seats=seats,
        hold=hold,
        hold_minutes=hold_minutes,
        metadata=metadata or {},
        idempotency_key=idempotency_key,
        now=now,
    )
    return SLOT_BOOKINGS.hold(ask, now=now, actor=actor or guest)


def slot_booking_confirm(*, booking_id: int, user: User, now: datetime) -> SlotBooking:
    """PENDING → CONFIRMED for the guest (or an operator). An overdue hold is expired instead, that
    change commits, and the answer is 410; a booking that is not PENDING is a 409.

    Locks the guest's row, then the slot, then the booking. The guest's row serializes the confirm
    with the guest's new bookings: a new booking that counted this hold as lapsed cannot commit
    beside a confirm that still saw it alive (the one-per-host and max-active rules)."""
    return _transition(booking_id, Status.CONFIRMED, action=CONFIRM, user=user, now=now)


def slot_booking_cancel(*, booking_id: int, user: User, now: datetime, reason: str = "") -> SlotBooking:
    """Cancel a booking and free its seats. The guest, the slot's host or an operator may cancel. A guest
    cannot cancel a CONFIRMED booking within the cancellation window before the start. The host and
    operators can always cancel, and a PENDING hold can always be released."""
    metadata = {"reason": reason} if reason else None
    return _transition(
        booking_id, Status.CANCELLED, action=CANCEL, user=user, now=now, metadata=metadata, reason=reason
    )


def slot_booking_expire(*, booking_id: int, user: User, now: datetime) -> SlotBooking:
    """An operator expires a PENDING hold now, overdue or not (admin action)."""
    return _transition(booking_id, Status.EXPIRED, action=EXPIRE, user=user, now=now)


def _transition(booking_id: int, to_state: str, *, reason: str = "", **kwargs) -> SlotBooking:
    """One statement in autocommit (``ClaimEngine.transition``): the locks (the guest's for a confirm, the
    slot's, the booking's: ``SlotBookingLifecycle.lock_before``), the policy, the expiry of an overdue
    hold, the cancellation window, the write, the slot's seats and the audit event."""
    return SLOT_BOOKINGS.transition(
        claim_id=booking_id,
        what=f"Booking {booking_id}",
        to_state=to_state,
        params={"reason": reason, "window": cancellation_window()},
        **kwargs,
    )


def slot_bookings_expire_due(*, now: datetime, batch_size: int | None = None) -> int:
    """Flip every PENDING hold overdue at ``now`` to EXPIRED and free its seats, one audit event each
    (the beat job). Returns how many were expired."""
    return SLOT_BOOKINGS.expire_due(now=now, batch_size=batch_size)
