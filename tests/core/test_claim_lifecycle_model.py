"""A model-based test of the claim lifecycle (core/engine.py, docs/contract.md §2): random sequences
of holds, confirms, releases, cancels (of a booking's seats, some or all), operator expiries, the expiry
job, the reminder job and a clock that jumps forward, and joins and leaves of the event's waiting list,
whose head is offered the seats that free (§5.8),
over two users and a few resources in all three domains (cars, seats of an event, two slots), driven
through the services. After every step the database, and what clients read through the API, must
agree with a plain Python model: who holds what, the counts, each claim's state as clients see it (an
overdue hold reads EXPIRED before the job has run), one audit event per transition, and one reminder per
confirmed booking.

The short run is part of every test run (bounded, derandomized: the same examples every time); the
long one runs with ``pytest -m long`` (`make test-long`, CONTRIBUTING.md). Each example runs in a
savepoint of the test's transaction, rolled back by its teardown, so every example starts from the same
database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule, run_state_machine_as_test
from rest_framework.test import APIClient

from core import expiry, invariants, reminders
from core.audit.models import AuditEvent
from core.errors import DomainError
from events import selectors as event_selectors
from events.api import views as event_views
from events.models import SeatHoldGroup, WaitlistEntry
from events.services import seat_holds, waitlist
from reservations import services as reservations
from reservations.api import views as reservation_views
from reservations.models import Reservation
from slots.api import views as slot_views
from slots.models import SlotBooking
from slots.services import bookings as slots_bookings
from tests.conftest import Clock
from tests.events.factories import make_event
from tests.reservations.factories import CarFactory
from tests.slots.factories import HostFactory, SlotFactory

HELD, CONFIRMED, EXPIRED = "HELD", "CONFIRMED", "EXPIRED"
PENDING, CANCELLED, RELEASED = "PENDING", "CANCELLED", "RELEASED"
SEAT_CODES = [f"S{n}" for n in range(1, 7)]
ACTORS = st.sampled_from(["owner", "owner", "operator", "other"])  # who asks for a transition
SUBJECT_TYPE = {"reservations": "reservation", "events": "seat_hold_group", "slots": "slotbooking"}
WAITING, OFFERED, ACCEPTED, LEFT = "WAITING", "OFFERED", "ACCEPTED", "LEFT"


@dataclass
class World:
    """What every example starts from (written in the test's transaction, before the first one)."""

    users: list
    staff: object
    cars: list
    event: object
    slots: list  # each with its own host: the one-booking-per-host rule never joins them
    start: datetime  # the clock at each example's start, a day ahead: the services judge by it alone


@dataclass
class Claim:
    """One claim as the model knows it."""

    domain: str
    pk: object
    owner: int
    resource: object  # a car id, a slot id; for seats the event
    state: str
    expires_at: datetime | None
    seats: tuple = ()  # the seat codes of a hold group
    seat_count: int = 1  # the seats of a slot booking
    trail: list[str] = field(default_factory=list)  # audit event types, in order
    booking_id: uuid.UUID | None = None  # a confirmed hold group's
    reminded: bool = False  # a booking's reminder was sent

    @property
    def held(self) -> str:
        return PENDING if self.domain == "slots" else HELD

    def overdue(self, now: datetime) -> bool:
        return self.state == self.held and self.expires_at is not None and self.expires_at <= now

    def seen_state(self, now: datetime) -> str:
        return EXPIRED if self.overdue(now) else self.state

    def active(self, now: datetime) -> bool:
        return self.state == CONFIRMED or (self.state == self.held and not self.overdue(now))

    def move(self, state: str) -> None:
        self.state = state
        self.trail.append(state)


@dataclass
class Entry:
    """One waiting-list entry as the model knows it."""

    pk: int
    owner: int
    quantity: int
    state: str = WAITING
    offer: Claim | None = None  # the hold it was offered
    trail: list[str] = field(default_factory=lambda: ["CREATED"])

    def seen_state(self, now: datetime) -> str:
        if self.state == OFFERED and self.offer is not None and self.offer.overdue(now):
            return EXPIRED  # as its hold reads
        return self.state

    def move(self, state: str) -> None:
        self.state = state
        self.trail.append(state)


class ClaimLifecycle(RuleBasedStateMachine):
    world: World  # set by the test, before the first example
    claims = Bundle("claims")
    entries = Bundle("entries")

    def __init__(self):
        super().__init__()
        self._example = transaction.atomic()
        self._example.__enter__()  # a savepoint: teardown rolls this example back
        self.clock = Clock(self.world.start)
        for views in (reservation_views, event_views, slot_views):
            views.timezone = self.clock  # the API reads judge by the same clock (restored by the test)
        self.model: dict[tuple[str, object], Claim] = {}
        self.waitlist: list[Entry] = []  # in join order
        self.first_event = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
        self.api = APIClient()
        self.api.force_authenticate(self.world.staff)

    def teardown(self):
        try:
            self.the_monitor_finds_nothing_broken()
        finally:
            transaction.set_rollback(True)
            self._example.__exit__(None, None, None)

    # --- helpers ----------------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def of(self, domain: str) -> list[Claim]:
        return [c for c in self.model.values() if c.domain == domain]

    def expire(self, claim: Claim) -> None:
        self.move(claim, EXPIRED)

    def move(self, claim: Claim, state: str) -> None:
        """A claim's transition, and what it makes of the waiting-list entry it was offered to."""
        claim.move(state)
        for entry in self.waitlist:
            if entry.offer is claim and entry.state == OFFERED and state in (CONFIRMED, RELEASED, EXPIRED):
                entry.move(ACCEPTED if state == CONFIRMED else EXPIRED)

    def waiting(self) -> list[Entry]:
        return [e for e in self.waitlist if e.state == WAITING]

    def offers(self) -> None:
        """The seats that freed go to the head of the list while its whole quantity is free: free by the
        stored rows (a hold overdue but not yet expired still has its seats)."""
        while self.waiting():
            head = self.waiting()[0]
            stored = {code for c in self.of("events") if c.state in (HELD, CONFIRMED) for code in c.seats}
            free = set(SEAT_CODES) - stored
            if len(free) < head.quantity:
                return
            group = WaitlistEntry.objects.get(pk=head.pk).hold_group
            assert group is not None, f"entry {head.pk} should have been offered {head.quantity} of {sorted(free)}"
            codes = tuple(sorted(event_selectors.group_seat_codes(group)))
            assert len(codes) == head.quantity and set(codes) <= free
            expires_at = self.now + timedelta(minutes=self.world.event.hold_minutes)
            head.offer = self.add(Claim("events", group.pk, head.owner, None, HELD, expires_at, seats=codes))
            head.move(OFFERED)

    def attempt(self, call, expected_error: str | None):
        """Call a service; it must raise the DomainError with code ``expected_error``, or succeed."""
        try:
            result = call()
        except DomainError as error:
            assert error.code == expected_error, f"expected {expected_error or 'success'}, got {error.code}"
            return None
        assert expected_error is None, f"expected {expected_error}, got success"
        return result

    def add(self, claim: Claim):
        claim.trail.append("CREATED")
        self.model[claim.domain, claim.pk] = claim
        return claim

    # --- holds ------------------------------------------------------------------------------------

    @rule(target=claims, user=st.integers(0, 1), car=st.integers(0, 2), minutes=st.sampled_from([1, 5, 15]))
    def hold_car(self, user, car, minutes):
        car_id = self.world.cars[car].pk
        on_car = [c for c in self.of("reservations") if c.resource == car_id]
        taken = any(c.active(self.now) for c in on_car)
        held = self.attempt(
            lambda: reservations.reservation_hold(
                car_id=car_id, buyer=self.world.users[user], hold_minutes=minutes, now=self.now
            ),
            "car_unavailable" if taken else None,
        )
        if held is None:
            return multiple()
        for overdue in (c for c in on_car if c.overdue(self.now)):
            self.expire(overdue)
        return self.add(
            Claim(
                "reservations", held.pk, self.world.users[user].pk, car_id, HELD, self.now + timedelta(minutes=minutes)
            )
        )

    def seats_taken(self) -> set[str]:
        return {code for c in self.of("events") if c.active(self.now) for code in c.seats}

    def hold_of(self, group: SeatHoldGroup, user: int) -> Claim:
        codes = tuple(sorted(s.code for s in group.seats))
        for overdue in self.of("events"):
            if overdue.overdue(self.now) and set(overdue.seats) & set(codes):
                self.expire(overdue)  # a hold taking an overdue hold's seat expires that hold, whole
        expires_at = self.now + timedelta(minutes=self.world.event.hold_minutes)
        return self.add(Claim("events", group.pk, self.world.users[user].pk, None, HELD, expires_at, seats=codes))

    @rule(target=claims, user=st.integers(0, 1), codes=st.sets(st.sampled_from(SEAT_CODES), min_size=1, max_size=2))
    def hold_seats(self, user, codes):
        taken = bool(set(codes) & self.seats_taken())
        group = self.attempt(
            lambda: seat_holds.seat_hold(
                event_id=self.world.event.pk, user=self.world.users[user], seat_codes=sorted(codes), now=self.now
            ),
            "waitlist_active" if self.waiting() else "seats_unavailable" if taken else None,
        )
        if group is None:
            return multiple()
        assert sorted(s.code for s in group.seats) == sorted(codes)
        return self.hold_of(group, user)

    @rule(target=claims, user=st.integers(0, 1), quantity=st.integers(1, 3))
    def hold_best_seats(self, user, quantity):
        free = set(SEAT_CODES) - self.seats_taken()
        group = self.attempt(
            lambda: seat_holds.seat_hold(
                event_id=self.world.event.pk, user=self.world.users[user], quantity=quantity, now=self.now
            ),
            "waitlist_active" if self.waiting() else "seats_unavailable" if len(free) < quantity else None,
        )
        if group is None:
            return multiple()
        assert len(group.seats) == quantity and {s.code for s in group.seats} <= free
        return self.hold_of(group, user)

    @rule(
        target=claims,
        user=st.integers(0, 1),
        slot=st.integers(0, 1),
        seats=st.integers(1, 2),
        hold=st.booleans(),
    )
    def book_slot(self, user, slot, seats, hold):
        the_slot, guest = self.world.slots[slot], self.world.users[user]
        on_slot = [c for c in self.of("slots") if c.resource == the_slot.pk]
        booked = sum(c.seat_count for c in on_slot if c.active(self.now))
        if any(c.owner == guest.pk and c.active(self.now) for c in on_slot):
            expected = "limit_reached"  # one active booking per guest per host (each slot has its own host)
        elif booked + seats > the_slot.capacity:
            expected = "slot_full"
        else:
            expected = None
        booking = self.attempt(
            lambda: slots_bookings.slot_booking_create(
                slot_id=the_slot.pk, guest=guest, seats=seats, hold=hold, now=self.now
            ),
            expected,
        )
        if booking is None:
            return multiple()
        for overdue in (c for c in on_slot if c.overdue(self.now)):
            self.expire(overdue)  # a booking expires its slot's overdue holds
        expires_at = self.now + timedelta(minutes=django_settings.SLOTS_HOLD_MINUTES_DEFAULT) if hold else None
        state = PENDING if hold else CONFIRMED
        return self.add(Claim("slots", booking.pk, guest.pk, the_slot.pk, state, expires_at, seat_count=seats))

    # --- the waiting list -------------------------------------------------------------------------

    @rule(target=entries, user=st.integers(0, 1), quantity=st.integers(1, 4))
    def join_waitlist(self, user, quantity):
        owner = self.world.users[user]
        free = len(SEAT_CODES) - len(self.seats_taken())
        if any(e.owner == owner.pk and e.state in (WAITING, OFFERED) for e in self.waitlist):
            expected = "already_waiting"
        elif not self.waiting() and free >= quantity:
            expected = "seats_available"
        else:
            expected = None
        joined = self.attempt(
            lambda: waitlist.waitlist_join(event_id=self.world.event.pk, user=owner, quantity=quantity, now=self.now),
            expected,
        )
        if joined is None:
            return multiple()
        assert joined.position == len(self.waiting()) + 1
        entry = Entry(joined.pk, owner.pk, quantity)
        self.waitlist.append(entry)
        return entry

    @rule(entry=entries, who=ACTORS)
    def leave_waitlist(self, entry, who):
        owner, other = sorted(self.world.users, key=lambda u: u.pk != entry.owner)
        user = {"owner": owner, "operator": self.world.staff, "other": other}[who]
        if who == "other":
            expected = "not_owner"
        elif entry.state != WAITING:
            expected = "waitlist_entry_not_waiting"
        else:
            expected = None
        left = self.attempt(
            lambda: waitlist.waitlist_leave(event_id=self.world.event.pk, entry_id=entry.pk, user=user, now=self.now),
            expected,
        )
        if left is not None:
            entry.move(LEFT)
            self.offers()

    # --- transitions ------------------------------------------------------------------------------

    def transition(self, claim: Claim, who: str, to_state: str) -> None:
        """A transition as the engine makes it: the owner's or an operator's (expiring a hold now is the
        operator's alone); an overdue hold is expired first and stays so (then 410 for a confirm, the
        domain's refusal otherwise); else the state machine's rule, and 410 for confirming an expired hold."""
        owner, other = sorted(self.world.users, key=lambda u: u.pk != claim.owner)
        user = {"owner": owner, "operator": self.world.staff, "other": other}[who]
        refused = REFUSED[claim.domain, to_state]

        def call():
            return SERVICES[claim.domain, to_state](self, claim, user)

        if to_state == EXPIRED and not user.is_staff:
            self.attempt(call, "forbidden")
        elif not user.is_staff and user.pk != claim.owner:
            self.attempt(call, "not_owner")
        elif claim.overdue(self.now) and to_state != EXPIRED:
            self.expire(claim)
            self.attempt(call, "hold_expired" if to_state == CONFIRMED else refused)
        elif to_state in ALLOWED[claim.domain].get(claim.state, ()):
            result = self.attempt(call, None)
            self.move(claim, to_state)
            if claim.domain == "events" and to_state == CONFIRMED:
                claim.booking_id = result.booking_group_id
        elif to_state == CONFIRMED and claim.state == EXPIRED:
            self.attempt(call, "hold_expired")  # however it expired
        else:
            self.attempt(call, refused)
        self.offers()

    @rule(claim=claims, who=ACTORS)
    def confirm(self, claim, who):
        self.transition(claim, who, CONFIRMED)

    @rule(claim=claims, who=ACTORS)
    def cancel(self, claim, who):
        if claim.domain == "events" and claim.booking_id is None:
            # A booking is cancelled by its booking id: a hold never confirmed has none; its own id is not one.
            self.attempt(
                lambda: seat_holds.seat_booking_cancel(booking_group_id=claim.pk, user=self.world.staff, now=self.now),
                "not_found",
            )
            return
        self.transition(claim, who, CANCELLED)

    @rule(pick=st.integers(0, 7), who=ACTORS, own=st.booleans(), data=st.data())
    def cancel_some_seats(self, pick, who, own, data):
        """Some seats of a booking (docs/contract.md §5), one of those made so far (``pick``): the booking's
        own seats only (``own``: drawn from them, else from the event's); its last ones cancel it; the seats
        freed go to the waiting list."""
        bookings = [c for c in self.of("events") if c.booking_id is not None]
        assume(bookings)
        claim = bookings[pick % len(bookings)]
        pool = list(claim.seats) if own and claim.seats else SEAT_CODES
        codes = data.draw(st.sets(st.sampled_from(pool), min_size=1, max_size=2))
        owner, other = sorted(self.world.users, key=lambda u: u.pk != claim.owner)
        user = {"owner": owner, "operator": self.world.staff, "other": other}[who]
        if who == "other":
            expected = "not_owner"
        elif claim.state != CONFIRMED:
            expected = "booking_not_active"
        elif not codes <= set(claim.seats):
            expected = "validation_error"
        else:
            expected = None
        done = self.attempt(
            lambda: seat_holds.seat_booking_cancel(
                booking_group_id=claim.booking_id, user=user, now=self.now, seat_codes=sorted(codes)
            ),
            expected,
        )
        if done is None:
            return
        if codes == set(claim.seats):
            self.move(claim, CANCELLED)
        else:
            claim.seats = tuple(code for code in claim.seats if code not in codes)
            claim.trail.append(seat_holds.SEATS_CANCELLED)
            assert done.seat_codes == sorted(claim.seats, key=SEAT_CODES.index)
        self.offers()

    @rule(claim=claims, who=ACTORS)
    def release(self, claim, who):
        assume(claim.domain == "events")
        self.transition(claim, who, RELEASED)

    @rule(claim=claims, who=ACTORS)
    def operator_expires(self, claim, who):
        self.transition(claim, who, EXPIRED)

    @rule()
    def expiry_job(self):
        due = [c for c in self.model.values() if c.overdue(self.now)]
        done = expiry.expire_all(now=self.now)
        for claim in due:
            self.expire(claim)
        assert sum(done.values()) == len(due)
        self.offers()

    def start_of(self, claim: Claim) -> datetime | None:
        """When a booking starts: its slot's start, the event's date; a car reservation has none."""
        if claim.domain == "slots":
            return next(slot.start for slot in self.world.slots if slot.pk == claim.resource)
        return self.world.event.event_date if claim.domain == "events" else None

    @rule(booking=st.sampled_from(["event", "slot 0", "slot 1"]))
    def reminder_job(self, booking):
        """The reminder job, run half a day before the event's or a slot's start (weeks ahead of the clock:
        it changes no claim's state). Every booking is made long before its start: all are due."""
        start = self.world.event.event_date if booking == "event" else self.world.slots[int(booking[-1])].start
        at, window = start - timedelta(hours=12), timedelta(hours=django_settings.REMINDER_HOURS_BEFORE)
        due = [
            c
            for c in self.model.values()
            if c.state == CONFIRMED and not c.reminded and (starts := self.start_of(c)) and at < starts <= at + window
        ]
        sent = reminders.reminders_send(now=at)
        assert sum(sent.values()) == len(due), (sent, due)
        for claim in due:
            claim.reminded = True
            claim.trail.append("REMINDED")

    @rule(seconds=st.sampled_from([20, 90, 4 * 60, 6 * 60, 16 * 60]))
    def clock_jumps(self, seconds):
        self.clock.advance(seconds)

    # --- what must be true after every step -------------------------------------------------------

    @invariant()
    def stored_states_are_the_models(self):
        stored = {
            ("reservations", pk): state
            for pk, state in Reservation.objects.filter(pk__in=[c.pk for c in self.of("reservations")]).values_list(
                "pk", "state"
            )
        }
        stored |= {
            ("events", pk): state
            for pk, state in SeatHoldGroup.objects.filter(pk__in=[c.pk for c in self.of("events")]).values_list(
                "pk", "state"
            )
        }
        stored |= {
            ("slots", pk): state
            for pk, state in SlotBooking.objects.filter(pk__in=[c.pk for c in self.of("slots")]).values_list(
                "pk", "status"
            )
        }
        assert stored == {key: c.state for key, c in self.model.items()}
        groups = SeatHoldGroup.objects.filter(pk__in=[c.pk for c in self.of("events")]).with_effective_state(
            now=self.now
        )
        assert {("events", g.pk): g.effective_state for g in groups} == {
            key: c.seen_state(self.now) for key, c in self.model.items() if c.domain == "events"
        }

    @invariant()
    def one_audit_event_per_transition(self):
        trails: dict[tuple[str, str], list[str]] = {}
        for subject_type, subject_id, event_type in (
            AuditEvent.objects.filter(id__gt=self.first_event, subject_type__in=SUBJECT_TYPE.values())
            .order_by("id")
            .values_list("subject_type", "subject_id", "event_type")
        ):
            trails.setdefault((subject_type, subject_id), []).append(event_type)
        assert trails == {(SUBJECT_TYPE[c.domain], str(c.pk)): c.trail for c in self.model.values()}
        entry_trails: dict[str, list[str]] = {}
        for subject_id, event_type in (
            AuditEvent.objects.filter(id__gt=self.first_event, subject_type="waitlist_entry")
            .order_by("id")
            .values_list("subject_id", "event_type")
        ):
            entry_trails.setdefault(subject_id, []).append(event_type)
        assert entry_trails == {str(e.pk): e.trail for e in self.waitlist}

    @invariant()
    def the_waiting_list_is_the_models(self):
        stored = dict(WaitlistEntry.objects.filter(event=self.world.event).values_list("pk", "state"))
        assert stored == {e.pk: e.state for e in self.waitlist}
        counts = self.api.get(f"/api/events/{self.world.event.pk}").json()
        assert counts["waitingCount"] == len(self.waiting())
        for entry in self.waitlist[-2:]:
            read = self.api.get(f"/api/events/{self.world.event.pk}/waitlist/{entry.pk}").json()
            position = self.waiting().index(entry) + 1 if entry.state == WAITING else None
            assert (read["state"], read["position"]) == (entry.seen_state(self.now), position)

    @invariant()
    def clients_read_what_the_model_says(self):
        now = self.now
        page = self.api.get("/api/reservations", {"limit": 100}).json()["results"]
        assert {r["id"]: r["state"] for r in page} == {c.pk: c.seen_state(now) for c in self.of("reservations")}
        cars = {c["id"]: c["available"] for c in self.api.get("/api/cars", {"limit": 100}).json()["results"]}
        for car in self.world.cars:
            taken = any(c.resource == car.pk and c.active(now) for c in self.of("reservations"))
            assert cars[car.pk] is not taken

        live = [c for c in self.of("events") if c.active(now)]
        booked = {code for c in live if c.state == CONFIRMED for code in c.seats}
        held = {code for c in live if c.state == HELD for code in c.seats}
        counts = self.api.get(f"/api/events/{self.world.event.pk}").json()
        assert (counts["confirmedSeats"], counts["heldSeats"], counts["availableSeats"]) == (
            len(booked),
            len(held),
            len(SEAT_CODES) - len(booked) - len(held),
        )
        seat_map = self.api.get(f"/api/events/{self.world.event.pk}/seats").json()["seats"]
        assert {s["code"]: s["status"] for s in seat_map} == {
            code: "BOOKED" if code in booked else "HELD" if code in held else "AVAILABLE" for code in SEAT_CODES
        }

        page = self.api.get("/api/bookings", {"limit": 100}).json()["results"]
        assert {b["id"]: b["status"] for b in page} == {c.pk: c.seen_state(now) for c in self.of("slots")}
        listed = {s["id"]: s["remainingCapacity"] for s in self.api.get("/api/slots", {"limit": 100}).json()["results"]}
        for slot in self.world.slots:
            taken = sum(c.seat_count for c in self.of("slots") if c.resource == slot.pk and c.active(now))
            assert listed[slot.pk] == slot.capacity - taken

    def the_monitor_finds_nothing_broken(self):
        """At the end of each example, the invariant monitor agrees: nothing is broken (but a hold the
        job has not reached may be stale)."""
        # Every claim's trail: the audit events are stamped by the real clock, a day behind this one.
        report = invariants.invariants_check(now=self.now, all_history=True)
        assert [r["name"] for r in report.broken if not r["name"].endswith(".no_stale_hold")] == []


# Each transition's service, called by the machine for a claim and a user.
SERVICES = {
    ("reservations", CONFIRMED): lambda m, c, user: reservations.reservation_confirm(
        reservation_id=c.pk, user=user, now=m.now
    ),
    ("reservations", CANCELLED): lambda m, c, user: reservations.reservation_cancel(
        reservation_id=c.pk, user=user, now=m.now
    ),
    ("reservations", EXPIRED): lambda m, c, user: reservations.reservation_expire(
        reservation_id=c.pk, user=user, now=m.now
    ),
    ("events", CONFIRMED): lambda m, c, user: seat_holds.seat_hold_confirm(
        event_id=m.world.event.pk, hold_group_id=c.pk, user=user, now=m.now
    ),
    ("events", RELEASED): lambda m, c, user: seat_holds.seat_hold_release(
        event_id=m.world.event.pk, hold_group_id=c.pk, user=user, now=m.now
    ),
    ("events", CANCELLED): lambda m, c, user: seat_holds.seat_booking_cancel(
        booking_group_id=c.booking_id, user=user, now=m.now
    ),
    ("events", EXPIRED): lambda m, c, user: seat_holds.seat_hold_expire(hold_group_id=c.pk, user=user, now=m.now),
    ("slots", CONFIRMED): lambda m, c, user: slots_bookings.slot_booking_confirm(booking_id=c.pk, user=user, now=m.now),
    ("slots", CANCELLED): lambda m, c, user: slots_bookings.slot_booking_cancel(booking_id=c.pk, user=user, now=m.now),
    ("slots", EXPIRED): lambda m, c, user: slots_bookings.slot_booking_expire(booking_id=c.pk, user=user, now=m.now),
}
# The error code of a transition the claim's state does not allow.
REFUSED = {
    **{("reservations", to): "invalid_state_transition" for to in (CONFIRMED, CANCELLED, EXPIRED)},
    **{("events", to): "hold_not_active" for to in (CONFIRMED, RELEASED, EXPIRED)},
    ("events", CANCELLED): "booking_not_active",
    ("slots", CONFIRMED): "booking_not_pending",
    **{("slots", to): "invalid_state_transition" for to in (CANCELLED, EXPIRED)},
}
ALLOWED = {
    "reservations": Reservation.TRANSITIONS,
    "events": SeatHoldGroup.TRANSITIONS,
    "slots": SlotBooking.TRANSITIONS,
}


@pytest.fixture
def world(user, other_user, staff, monkeypatch):
    for views in (reservation_views, event_views, slot_views):
        monkeypatch.setattr(views, "timezone", views.timezone)  # put back what the machine replaces
    return World(
        users=[user, other_user],
        staff=staff,
        cars=[CarFactory() for _ in range(3)],
        event=make_event(total_seats=len(SEAT_CODES)),
        slots=[
            SlotFactory(host=HostFactory(), capacity=2, start=timezone.now() + timedelta(days=30 + n)) for n in (0, 1)
        ],
        start=timezone.now() + timedelta(days=1),
    )


def run(world: World, **limits) -> None:
    class Machine(ClaimLifecycle):
        pass

    Machine.world = world
    run_state_machine_as_test(
        Machine,
        settings=settings(
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            **limits,
        ),
    )


def test_the_claim_lifecycle_agrees_with_its_model(world):
    run(world, max_examples=4, stateful_step_count=25, derandomize=True)


@pytest.mark.slow
@pytest.mark.long
def test_the_claim_lifecycle_agrees_with_its_model_at_length(world):
    run(world, max_examples=200, stateful_step_count=50, print_blob=True)


# The model judges by its own clock: every service does too, in every statement (a hold overdue at the
# ``now`` it is given never blocks, whatever the database's clock says).


def test_a_car_hold_overdue_at_the_given_now_does_not_block(user, other_user):
    car = CarFactory()
    now = timezone.now()
    reservations.reservation_hold(car_id=car.pk, buyer=user, hold_minutes=15, now=now)

    held = reservations.reservation_hold(car_id=car.pk, buyer=other_user, hold_minutes=15, now=now + timedelta(hours=1))

    assert held.buyer == other_user


@pytest.mark.parametrize("ask", [{"seat_codes": ["S1"]}, {"quantity": 2}])
def test_a_seat_hold_overdue_at_the_given_now_does_not_block(user, other_user, ask):
    event = make_event(total_seats=2)
    now = timezone.now()
    seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1", "S2"], now=now)

    held = seat_holds.seat_hold(event_id=event.pk, user=other_user, now=now + timedelta(hours=1), **ask)

    assert held.user == other_user
