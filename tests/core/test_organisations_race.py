"""A member removed while they act (docs/decisions/0025-organisations.md, core/locking.py's order, 6): their
in-flight request either completes before the removal commits or is refused — never applied after it. Each
test has a control that takes the membership lock (or its check) away and shows the test notices. And two
owners leaving at once (the order's 0, the organisation's lock): one leaves, the other is its last owner."""

import contextlib
import threading
import time

import pytest
from django.db import connections, transaction
from django.utils import timezone
from psycopg import sql

from core import locking
from core.errors import NotFound
from core.organisations import access
from core.organisations.models import Membership
from core.organisations.roles import Role
from events import selectors
from events.models import SeatHoldGroup, WaitlistEntry
from events.services import seat_holds, waitlist
from reservations.models import Car, Reservation
from reservations.services import car_update, reservation_cancel
from tests.concurrency import run_concurrently
from tests.events.factories import make_event, write_hold
from tests.factories import OrganisationFactory, UserFactory, member
from tests.reservations.factories import CarFactory, ReservationFactory
from web.organisations import services

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]


def _team():
    organisation = OrganisationFactory()
    owner, operator = UserFactory(), UserFactory()
    member(owner, organisation, Role.OWNER)
    member(operator, organisation, Role.MANAGER)
    return organisation, owner, operator


def _removed_after_reading_roles() -> str:
    """The operator's request reads their roles with the user (a member), then the owner removes them and
    that commits, then the request cancels a buyer's hold in the organisation (one statement). Returns
    what became of the hold."""
    organisation, owner, operator = _team()
    reservation = ReservationFactory(car=CarFactory(organisation=organisation))
    assert access.roles_of(operator) == {organisation.pk: Role.MANAGER}  # read at the request's start

    services.membership_remove(organisation_id=organisation.pk, user_id=operator.pk, actor=owner)
    with contextlib.suppress(NotFound):  # refused as another organisation's (it is now)
        reservation_cancel(reservation_id=reservation.pk, user=operator, now=timezone.now())
    return Reservation.objects.get(pk=reservation.pk).state


def test_a_transition_after_the_removal_committed_is_refused_though_the_request_read_the_member_before():
    assert _removed_after_reading_roles() == "HELD"


def test_control_without_the_membership_check_in_the_statement_the_removed_member_cancels(monkeypatch):
    monkeypatch.setattr(locking, "member_lock_sql", lambda organisation: sql.SQL("true"))

    assert _removed_after_reading_roles() == "CANCELLED"


def _leave_an_entry(event):
    """A buyer's waiting-list entry (the event sold out): the operator removes it; its state after."""
    seat_holds.seat_hold(event_id=event.pk, user=UserFactory(), quantity=event.total_seats, now=timezone.now())
    entry = waitlist.waitlist_join(event_id=event.pk, user=UserFactory(), quantity=1, now=timezone.now())
    return (
        lambda operator: waitlist.waitlist_leave(
            event_id=event.pk, entry_id=entry.pk, user=operator, now=timezone.now()
        ),
        lambda: WaitlistEntry.objects.get(pk=entry.pk).state,
    )


def _cancel_a_seat(event):
    """A buyer's booking of two seats: the operator cancels one of them; the seats booked after."""
    group = write_hold(event, ["S1", "S2"], state="CONFIRMED")
    return (
        lambda operator: seat_holds.seat_booking_cancel(
            booking_group_id=group.booking_group_id, user=operator, now=timezone.now(), seat_codes=["S1"]
        ),
        lambda: len(selectors.group_seat_codes(SeatHoldGroup.objects.get(pk=group.pk))),
    )


def _removed_before_a_service_write(act) -> object:
    """``_removed_after_reading_roles`` for a service's transaction that checks a buyer's row in Python,
    then the operator's membership under its lock (``ClaimPolicy.require_member``). Returns ``act``'s
    row after."""
    organisation, owner, operator = _team()
    write, state = act(make_event(total_seats=2, organisation_id=organisation.pk))
    assert access.roles_of(operator) == {organisation.pk: Role.MANAGER}

    services.membership_remove(organisation_id=organisation.pk, user_id=operator.pk, actor=owner)
    with contextlib.suppress(NotFound):
        write(operator)
    return state()


SERVICE_WRITES = [(_leave_an_entry, "WAITING", "LEFT"), (_cancel_a_seat, 2, 1)]


@pytest.mark.parametrize(("act", "untouched", "_"), SERVICE_WRITES)
def test_a_service_write_after_the_removal_committed_is_refused(act, untouched, _):
    assert _removed_before_a_service_write(act) == untouched


@pytest.mark.parametrize(("act", "_", "done"), SERVICE_WRITES)
def test_control_without_the_membership_lock_the_removed_member_writes(monkeypatch, act, _, done):
    monkeypatch.setattr(access, "require_member", lambda *args, **kwargs: None)

    assert _removed_before_a_service_write(act) == done


def _edit_racing_a_removal(hold_seconds: float = 0.5) -> tuple[float, float, str]:
    """A manager's edit of a car (a transaction: the car's lock, then their membership's) holds its locks
    for ``hold_seconds`` before it commits, while the owner removes them. Returns when the edit sent its
    COMMIT, when the removal returned, and the car's label after both. (The edit's moment is taken before
    its COMMIT, not after: a removal released by that COMMIT may return before the edit's thread runs
    again.)"""
    organisation, owner, operator = _team()
    car = CarFactory(organisation=organisation, label="before")
    locked, committed = threading.Event(), {}

    def edit():
        try:
            with transaction.atomic():
                car_update(car_id=car.pk, actor=operator, label="edited")
                locked.set()
                time.sleep(hold_seconds)
                committed["edit"] = time.monotonic()
        finally:
            locked.set()
            connections.close_all()

    def remove():
        try:
            assert locked.wait(10)
            services.membership_remove(organisation_id=organisation.pk, user_id=operator.pk, actor=owner)
            committed["removal"] = time.monotonic()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=edit), threading.Thread(target=remove)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not Membership.objects.filter(user=operator, organisation=organisation).exists()
    return committed["edit"], committed["removal"], Car.objects.get(pk=car.pk).label


def test_a_removal_waits_for_the_members_edit_in_flight_which_completes_first():
    edit, removal, label = _edit_racing_a_removal()

    assert label == "edited" and edit < removal


def test_control_without_the_membership_lock_the_edit_commits_after_the_removal(monkeypatch):
    def unlocked(user_id: int, organisation_id: int) -> str | None:  # the same read, without FOR SHARE
        row = Membership.objects.filter(user_id=user_id, organisation_id=organisation_id).values_list("role")
        return next(iter(row), (None,))[0]

    monkeypatch.setattr(locking, "lock_member", unlocked)

    edit, removal, label = _edit_racing_a_removal()

    assert label == "edited" and removal < edit  # applied by someone no longer a member: what the lock prevents


def _two_owners_leaving_at_once(monkeypatch) -> tuple[list[object], int]:
    """The organisation's two owners each remove themselves, released together, each pausing after the rule
    (``_keep_an_owner``) read the owners, so that without the organisation's lock both read two. Returns
    what each call gave back and how many owners are left."""
    organisation = OrganisationFactory()
    owners = [UserFactory(), UserFactory()]
    for owner in owners:
        member(owner, organisation, Role.OWNER)
    rule = services._keep_an_owner

    def slowly(*args, **kwargs):
        rule(*args, **kwargs)
        time.sleep(0.3)

    monkeypatch.setattr(services, "_keep_an_owner", slowly)

    def leave(owner):
        return lambda: services.membership_remove(organisation_id=organisation.pk, user_id=owner.pk, actor=owner)

    results = run_concurrently([leave(owner) for owner in owners])
    return results, Membership.objects.filter(organisation=organisation, role=Role.OWNER).count()


def test_of_two_owners_leaving_at_once_one_leaves_and_the_other_is_refused_as_the_last(monkeypatch):
    results, owners_left = _two_owners_leaving_at_once(monkeypatch)

    assert sorted(type(r).__name__ for r in results) == ["LastOwner", "NoneType"] and owners_left == 1


def test_control_without_the_organisations_lock_both_leave_and_it_has_no_owner(monkeypatch):
    monkeypatch.setattr(locking, "lock_organisation", lambda organisation_id: True)

    results, owners_left = _two_owners_leaving_at_once(monkeypatch)

    assert results == [None, None] and owners_left == 0
