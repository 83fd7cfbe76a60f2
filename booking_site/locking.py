"""Every row lock a write takes, in one module (ADR 0001). Nothing else in the code calls
``select_for_update``.

The order. A transaction that takes more than one of these locks takes them in this order, and each
kind in primary-key order, so two requests never wait for each other in a circle:

1. ``lock_user``: one user row (the guest's for a slot booking, a confirm or a reschedule; the host's
   for creating slots). It serializes the rules that count one user's rows (bookings per guest, one
   per host, a host's slots never overlapping).
2. the resource's parent, the event row: ``share_event`` in a seat hold (``FOR KEY SHARE``);
   ``lock_event`` for an edit of the event's details, ``lock_event_sales`` for the sales switch. Those
   two take no other lock.
3. ``lock_car``, ``lock_slots``, ``lock_seats``: the rows a claim is on. They serialize the claims on
   one car, the seats of one slot (its ``booked`` counter), each seat.
4. ``lock_claims``, ``lock_claim``: claim rows (reservations, seat hold groups, slot bookings), e.g.
   the overdue holds a new claim expires, or the one claim a confirm moves.
5. The one exception, written last: a confirm or a cancel of seats moves the event's
   ``confirmed_seats`` counter with a plain ``UPDATE`` as the last write of its transaction. That
   update's implicit lock (``FOR NO KEY UPDATE``) conflicts with no lock a hold takes on the event,
   and the transactions it does conflict with (edits, the sales switch) take no other row lock, so it
   cannot close a circle.

The mode is ``FOR NO KEY UPDATE`` (``select_for_update(no_key=True)``): it excludes every other
writer of the row just as well, but not the ``FOR KEY SHARE`` that inserting a row referencing the
locked one takes (an audit event naming a user as its actor, a booking naming its slot, a hold group
naming its event). With ``FOR UPDATE`` on a user row, "a guest books" and "the same guest confirms"
deadlocked on the audit insert. Two exceptions, each for a reason:

- ``share_event`` takes ``FOR KEY SHARE``: it is what inserting a hold group takes on its event
  anyway, so holds on one event never wait for each other, for an edit, or for a confirm moving the
  counter; and
- ``lock_event_sales`` takes ``FOR UPDATE``, the one mode that conflicts with ``FOR KEY SHARE``: a
  close waits for the holds in flight, and a hold that comes after it reads the event once the close
  has committed. So no hold judged "sales open" commits after a close commits. (PostgreSQL lets new
  ``FOR KEY SHARE`` lockers past a waiting ``FOR UPDATE``: under a stream of holds the close waits for
  a gap, at most ``DB_LOCK_TIMEOUT_MS``, then answers 503 ``busy``.)

One statement may take locks of several kinds: the earlier kinds as its conditions (``user_lock``,
``slot_lock``: ``EXISTS (SELECT … FOR NO KEY UPDATE)``), which run below the statement's own row lock,
so they are held before it is asked for (the plan's structure, not the order of a ``FOR UPDATE OF``
list). A check that depends on such a lock reads in a later statement, with a snapshot taken after it.

``lock_batch`` (the expiry job) is outside the order: ``SKIP LOCKED`` never waits, so it cannot
deadlock; a row a request holds is left to that request.

Every function refuses to run outside a transaction (a lock there would end with its statement). The
race tests' controls replace these functions to show that their test notices a missing lock.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection
from django.db.models import Exists, Model, OuterRef, QuerySet

from booking_site.accounts.models import User
from events.models import Event, Seat
from reservations.models import Car
from slots.models import Slot


def _in_transaction(what: str) -> None:
    if not connection.in_atomic_block:
        raise RuntimeError(f"{what} must be called inside a transaction: its lock would end with the statement")


# 1. users


def lock_user(user_id: int) -> User:
    """One user row, ``FOR NO KEY UPDATE``: serializes the rules that count this user's rows."""
    _in_transaction("lock_user")
    return User.objects.select_for_update(no_key=True).get(pk=user_id)


def user_lock(user_id: int | OuterRef) -> Exists:
    """The same lock as a condition of a bigger statement (true when the user exists), for a statement
    that takes a lock of a later kind too (``lock_slots(..., after=user_lock(id))``, a claim's lock):
    a sub-select runs below the statement's own row locking, so this lock is held before that one is
    asked for. Built anywhere; the lock function that runs the statement refuses to outside a
    transaction. The seam a race control replaces to remove the user's lock from a fused statement."""
    return Exists(User.objects.select_for_update(no_key=True).filter(pk=user_id))


# 2. the event row


def share_event(event_id: int) -> Event | None:
    """The event of a seat hold, ``FOR KEY SHARE``: the hold reads ``sales_open`` after a close committed,
    and a close waits for the holds in flight (see the module docstring)."""
    _in_transaction("share_event")
    table = Event._meta.db_table
    return next(iter(Event.objects.raw(f"SELECT * FROM {table} WHERE id = %s FOR KEY SHARE", [event_id])), None)


def lock_event(event_id: int) -> Event | None:
    """The event row for an edit of its details, ``FOR NO KEY UPDATE`` (holds go on meanwhile)."""
    _in_transaction("lock_event")
    return Event.objects.select_for_update(no_key=True).filter(pk=event_id).first()


def lock_event_sales(event_id: int) -> Event | None:
    """The event row for opening or closing sales, ``FOR UPDATE``: waits for the holds in flight."""
    _in_transaction("lock_event_sales")
    return Event.objects.select_for_update().filter(pk=event_id).first()


# 3. the resources


def lock_car(car_id: int, **annotations) -> Car | None:
    """Serializes every claim on one car. ``annotations`` are read by the same statement, from its
    snapshot: taken before any wait for the lock, so what they say may be stale once it is held."""
    _in_transaction("lock_car")
    return Car.objects.select_for_update(no_key=True, of=("self",)).filter(pk=car_id).annotate(**annotations).first()


def lock_slots(slot_ids: Iterable[int], *, after: Exists | None = None, **annotations) -> dict[int, Slot]:
    """Serializes the seats of each slot (its ``booked`` counter). A missing id is simply absent.
    ``after``: a lock of an earlier kind taken by the same statement first (``user_lock``);
    ``annotations`` are read by the same statement, from its snapshot (see ``lock_car``)."""
    _in_transaction("lock_slots")
    slots = Slot.objects.select_for_update(no_key=True, of=("self",)).filter(pk__in=set(slot_ids))
    if after is not None:
        slots = slots.filter(after)
    return {slot.pk: slot for slot in slots.annotate(**annotations).order_by("pk")}


def slot_lock(slot_id: int | OuterRef, *, after: Exists | None = None) -> Exists:
    """One slot's lock as a condition of a bigger statement (see ``user_lock``): a claim's lock
    (``lock_claim``) takes it first. The seam a race control replaces."""
    slots = Slot.objects.select_for_update(no_key=True).filter(pk=slot_id)
    return Exists(slots.filter(after) if after is not None else slots)


def lock_seats(*, event_id: int, seat_ids: list[int] | None = None, codes: list[str] | None = None) -> list[Seat]:
    """The named seats of one event (by id or by code); returns the seats that exist."""
    _in_transaction("lock_seats")
    seats = Seat.objects.select_for_update(no_key=True).filter(event_id=event_id)
    seats = seats.filter(pk__in=seat_ids) if seat_ids is not None else seats.filter(code__in=codes)
    return list(seats.order_by("pk"))


# 4. claims


def lock_claims(claims: QuerySet) -> list[Model]:
    """The claim rows ``claims`` selects (only those: rows it ``select_related`` are read, not locked;
    lock them first, in their place in the order). Under READ COMMITTED a row changed by the transaction we waited
    for is read again, and dropped when it no longer matches."""
    _in_transaction("lock_claims")
    return list(claims.select_for_update(no_key=True, of=("self",)).order_by("pk"))


def lock_claim(claims: QuerySet) -> Model | None:
    """The one claim row ``claims`` selects, or None."""
    _in_transaction("lock_claim")
    return claims.select_for_update(no_key=True, of=("self",)).first()


# the expiry job


def lock_batch(rows: QuerySet, size: int) -> list[Model]:
    """Up to ``size`` rows of ``rows`` (with the rows it ``select_related``), skipping any row another
    transaction holds: never waits."""
    _in_transaction("lock_batch")
    return list(rows.select_for_update(no_key=True, skip_locked=True).order_by("pk")[:size])
