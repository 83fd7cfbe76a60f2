"""Races against a real PostgreSQL: many connections released at once (docs/contract.md §2.1)."""

import random
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from psycopg import sql

from core import errors, locking
from core.audit import services as core_services
from core.audit.services import trail
from core.errors import LimitReached
from core.metrics import CONSTRAINT_BACKSTOPS
from events import locks
from events.admin import EventAdmin
from events.models import Event, Seat, SeatClaim, SeatHoldGroup
from events.services import events as events_events
from events.services import rules, seat_holds
from tests.concurrency import behind_an_open_hold, run_concurrently, unlocked
from tests.events.factories import make_event, violations, write_hold
from tests.factories import UserFactory, house_operator
from tests.lengths import short_and_long
from web.accounts.models import User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency, pytest.mark.slow]

USERS = 32


def backstop_hits() -> float:
    return CONSTRAINT_BACKSTOPS.labels("seat_claim_one_active_per_seat")._value.get()


def hold_race(client_for):
    """32 users each hold a random 3 of the same 6 seats at once."""
    event = make_event(total_seats=6)
    rng = random.Random(20260101)
    wanted = [rng.sample([f"S{i}" for i in range(1, 7)], 3) for _ in range(USERS)]
    clients = [client_for(UserFactory()) for _ in range(USERS)]
    before = backstop_hits()

    responses = run_concurrently(
        [
            lambda c=c, codes=codes: c.post(f"/api/events/{event.pk}/seats/reserve", {"seatCodes": codes})
            for c, codes in zip(clients, wanted, strict=True)
        ]
    )

    return event, wanted, responses, backstop_hits() - before


def assert_clean_race(event, wanted, responses, backstops) -> None:
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}, statuses
    winners = [r.json()["seatCodes"] for r in responses if r.status_code == 201]
    won_seats = [code for codes in winners for code in codes]
    assert len(won_seats) == len(set(won_seats)), "a seat is in two winning holds"
    assert 1 <= len(winners) <= 2
    for response, codes in zip(responses, wanted, strict=True):
        if response.status_code == 409:
            assert response.json()["error"]["code"] == "seats_unavailable"
            assert set(response.json()["error"]["details"]["seatCodes"]) <= set(codes)
    assert SeatHoldGroup.objects.filter(event=event).count() == len(winners), "a loser holds something"
    assert SeatClaim.objects.filter(event=event).count() == len(won_seats)
    assert violations(event) == []
    assert backstops == 0, "the lock, not the constraint, must decide the race"


def test_thirty_two_users_holding_random_seats_never_share_one(client_for):
    assert_clean_race(*hold_race(client_for))


def seats_unlocked(pause: float):
    """``locks.seat_locks_sql`` without the lock: the candidates read from the snapshot (so the statement
    judges them fresh) after ``pause`` seconds, so that every racer's snapshot is taken before any of them
    commits: the race, every time."""

    def seat_locks_sql(candidates, *, how, lock_before):
        return sql.SQL(
            "SELECT c.id, c.seq AS claim_seq FROM {} c WHERE {} AND (SELECT 1 FROM pg_sleep({})) = 1 "
            "ORDER BY c.short, c.section, c.row, c.number LIMIT %(window)s"
        ).format(sql.Identifier(candidates), lock_before, sql.Literal(pause))

    return seat_locks_sql


def test_control_without_the_seat_locks_the_race_is_caught(client_for, monkeypatch):
    monkeypatch.setattr(locks, "seat_locks_sql", seats_unlocked(pause=1.0))  # the event's and holder's locks stay

    event, wanted, responses, backstops = hold_race(client_for)

    assert backstops > 0, "without the locks the users race past the check and the constraint has to refuse them"
    with pytest.raises(AssertionError):
        assert_clean_race(event, wanted, responses, backstops)


def test_best_available_racers_all_get_distinct_seats(client_for):
    event = make_event(layout=(("A",), 3, 10))
    clients = [client_for(UserFactory()) for _ in range(12)]

    responses = run_concurrently(
        [lambda c=c: c.post(f"/api/events/{event.pk}/seats/reserve", {"quantity": 2}) for c in clients]
    )

    assert [r.status_code for r in responses] == [201] * 12
    seats = [code for r in responses for code in r.json()["seatCodes"]]
    assert len(seats) == len(set(seats)) == 24
    assert violations(event) == []


def best_available_rush(client_for, settings, *, layout, clients, holds_each, quantity):
    """``clients`` users, released together, each asking ``holds_each`` times in a row for ``quantity``
    best-available seats (all within the cap on a user's held seats: not what this races). Returns
    every response."""
    settings.EVENT_MAX_HELD_SEATS_PER_USER = holds_each * quantity
    event = make_event(layout=layout)
    apis = [client_for(UserFactory()) for _ in range(clients)]

    def rush(api):
        return [api.post(f"/api/events/{event.pk}/seats/reserve", {"quantity": quantity}) for _ in range(holds_each)]

    results = run_concurrently([lambda api=api: rush(api) for api in apis], timeout=300)

    assert not [r for r in results if isinstance(r, Exception)], results
    return event, [response for responses in results for response in responses]


@short_and_long("holds_each", 8, 25)
def test_best_available_is_never_refused_while_seats_are_free(client_for, settings, holds_each):
    """Issue defect 3: sixteen clients asking for one seat each on a 5,000-seat event were refused
    ("selling too fast") while thousands of seats were free. A hold passes over the seats other holds
    have locked (SKIP LOCKED) instead of waiting for them and finding them taken."""
    event, responses = best_available_rush(
        client_for, settings, layout=(("A", "B"), 50, 50), clients=16, holds_each=holds_each, quantity=1
    )

    refused = [r.json() for r in responses if r.status_code != 201]
    assert refused == [], f"{len(refused)} of {len(responses)} refused: {refused[:3]}"
    seats = [code for r in responses for code in r.json()["seatCodes"]]
    assert len(seats) == len(set(seats)) == 16 * holds_each
    assert violations(event) == []


def test_best_available_racers_get_adjacent_seats_in_one_row(client_for, settings):
    event, responses = best_available_rush(
        client_for, settings, layout=(("A", "B"), 10, 20), clients=12, holds_each=4, quantity=3
    )

    assert [r.status_code for r in responses] == [201] * 48
    positions = dict(Seat.objects.filter(event=event).values_list("code", "pk"))
    for response in responses:
        codes = response.json()["seatCodes"]
        rows = {code.rsplit("-", 1)[0] for code in codes}
        numbers = sorted(int(code.rsplit("-", 1)[1]) for code in codes)
        assert len(rows) == 1 and numbers == list(range(numbers[0], numbers[0] + 3)), codes
        assert all(code in positions for code in codes)
    seats = [code for r in responses for code in r.json()["seatCodes"]]
    assert len(seats) == len(set(seats)) == 144
    assert violations(event) == []


def test_fifty_confirms_of_one_hold_book_it_once():
    event, user = make_event(), UserFactory()
    group = seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1", "S2", "S3"], now=timezone.now())

    def confirm():
        return seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=user, now=timezone.now())

    results = run_concurrently([confirm] * 50)

    confirmed = [r for r in results if isinstance(r, SeatHoldGroup)]
    refused = [r for r in results if not isinstance(r, SeatHoldGroup)]
    assert len(confirmed) == 1
    assert all(isinstance(r, rules.HoldNotActive) for r in refused), refused
    assert trail(rules.hold_subject(group)).filter(event_type="CONFIRMED").count() == 1
    event.refresh_from_db()
    assert event.confirmed_seats == 3
    assert violations(event) == []


@pytest.mark.parametrize("overdue", [False, True])
def test_confirm_release_expiry_and_a_rival_hold_racing_end_in_one_state(overdue):
    event, owner, rival = make_event(), UserFactory(), UserFactory()
    created = timezone.now() - timedelta(hours=1) if overdue else timezone.now()
    group = write_hold(event, ["S1", "S2"], user=owner, created_at=created)
    now = timezone.now
    contenders = [
        lambda: seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=owner, now=now()),
        lambda: seat_holds.seat_hold_release(event_id=event.pk, hold_group_id=group.pk, user=owner, now=now()),
        lambda: seat_holds.seat_holds_expire_due(now=now()),
        lambda: seat_holds.seat_hold(event_id=event.pk, user=rival, seat_codes=["S2", "S3"], now=now()),
    ] * 3

    results = run_concurrently(contenders)

    assert not [r for r in results if isinstance(r, Exception) and not isinstance(r, errors.DomainError)]
    group.refresh_from_db()
    events = trail(rules.hold_subject(group)).exclude(event_type="CREATED")
    assert group.state in {"CONFIRMED", "RELEASED", "EXPIRED"}
    assert [(e.from_state, e.to_state) for e in events] == [("HELD", group.state)]
    rival_holds = SeatHoldGroup.objects.filter(user=rival)
    if overdue:
        assert group.state == "EXPIRED"
        assert rival_holds.count() == 1
    if group.state == "CONFIRMED":
        assert not rival_holds.exists()
    assert violations(event) == []


def test_two_expiry_jobs_at_once_write_one_event_per_group():
    event = make_event(total_seats=60)
    past = timezone.now() - timedelta(hours=1)
    groups = [
        write_hold(event, [f"S{i}", f"S{i + 1}"], created_at=past, expires_at=past + timedelta(minutes=1))
        for i in range(1, 60, 2)
    ]

    counts = run_concurrently([lambda: seat_holds.seat_holds_expire_due(now=timezone.now(), batch_size=4)] * 4)

    assert sum(counts) == 30
    for group in groups:
        assert trail(rules.hold_subject(group)).filter(event_type="EXPIRED").count() == 1
    assert violations(event) == []


def test_an_admin_edit_while_a_confirm_commits_keeps_the_counter(monkeypatch, staff):
    """The admin change form read the event (0 booked) before a confirm committed; its save comes after.
    It must write only the fields it edits: the counter stays equal to the confirmed claims (a full
    ``obj.save()`` wrote 0 back, and the booking's later cancel then broke the counter's constraint)."""
    event, guest = make_event(), UserFactory()
    group = seat_holds.seat_hold(event_id=event.pk, user=guest, seat_codes=["S1", "S2"], now=timezone.now())
    real_save_model = EventAdmin.save_model

    def slow_save_model(self, request, obj, form, change):
        time.sleep(0.5)  # the form has read the row; the confirm commits meanwhile
        return real_save_model(self, request, obj, form, change)

    monkeypatch.setattr(EventAdmin, "save_model", slow_save_model)
    operator = Client()
    operator.force_login(staff)
    local = timezone.localtime(event.event_date)

    def edit():
        form = {
            "name": "Renamed",
            "event_date_0": local.strftime("%Y-%m-%d"),
            "event_date_1": local.strftime("%H:%M:%S"),
            "location": event.location,
            "hold_minutes": "5",
            "admitted_per_minute": "60",
            "admission_window_minutes": "10",
        }
        return operator.post(f"/admin/events/event/{event.pk}/change/", form).status_code

    def confirm():
        time.sleep(0.2)
        return seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=guest, now=timezone.now())

    edited, confirmed = run_concurrently([edit, confirm])

    assert edited == 302 and isinstance(confirmed, SeatHoldGroup), (edited, confirmed)
    event.refresh_from_db()
    assert (event.name, event.confirmed_seats) == ("Renamed", 2)
    assert violations(event) == []
    seat_holds.seat_booking_cancel(booking_group_id=confirmed.booking_group_id, user=guest, now=timezone.now())
    event.refresh_from_db()
    assert event.confirmed_seats == 0


def test_a_confirm_that_waits_past_the_expiry_for_its_lock_is_410_and_expires_the_hold(client_for):
    """The view takes ``now`` before the service waits for the group's row lock; by the time it has the
    lock the hold is overdue. The service judges by ``locked_now``: 410, and the hold ends EXPIRED."""
    event, owner = make_event(), UserFactory()
    group = write_hold(event, ["S1"], user=owner, expires_at=timezone.now() + timedelta(seconds=0.6))
    api = client_for(owner)

    def busy_group():  # e.g. an operator's action on the hold, holding its row for a moment
        with transaction.atomic():
            list(SeatHoldGroup.objects.select_for_update().filter(pk=group.pk))
            time.sleep(1.2)
        return "done"

    def confirm():
        time.sleep(0.1)  # while the hold is live: the view's now is before the expiry
        return api.post(f"/api/events/{event.pk}/seats/confirm", {"holdGroupId": str(group.pk)})

    _, response = run_concurrently([busy_group, confirm])

    assert response.status_code == 410, response.content
    assert response.json()["error"]["code"] == "hold_expired"
    group.refresh_from_db()
    assert group.state == "EXPIRED" and group.booking_group_id is None
    assert [e.event_type for e in trail(rules.hold_subject(group))] == ["EXPIRED"]
    assert violations(event) == []


def test_confirms_holds_and_edits_of_one_event_at_once_never_deadlock():
    """Confirms move the event's counter (FOR NO KEY UPDATE on the event row), new holds insert rows that
    reference it (FOR KEY SHARE), operators edit its details (a FOR NO KEY UPDATE lock): on one event,
    all at once, many times. None may fail (a deadlock would surface as an error), and the counts add up."""
    event = make_event(total_seats=300)
    users = [UserFactory() for _ in range(24)]
    now = timezone.now
    for round_ in range(3):
        odd = [f"S{100 * round_ + 2 * i + 1}" for i in range(len(users))]
        even = [f"S{100 * round_ + 2 * i + 2}" for i in range(len(users))]
        held = [
            seat_holds.seat_hold(event_id=event.pk, user=u, seat_codes=[code], now=now())
            for u, code in zip(users, odd, strict=True)
        ]
        calls = [
            lambda g=g: seat_holds.seat_hold_confirm(event_id=event.pk, hold_group_id=g.pk, user=g.user, now=now())
            for g in held
        ]
        calls += [
            lambda u=u, code=code: seat_holds.seat_hold(event_id=event.pk, user=u, seat_codes=[code], now=now())
            for u, code in zip(users, even, strict=True)
        ]
        calls += [
            lambda n=n: events_events.event_update_details(event_id=event.pk, actor=None, now=now(), name=f"Gala {n}")
            for n in range(4)
        ]

        results = run_concurrently(calls)

        failed = [r for r in results if isinstance(r, Exception)]
        assert failed == [], failed
    event.refresh_from_db()
    assert event.confirmed_seats == SeatClaim.objects.filter(event=event, state="CONFIRMED").count() == 72
    assert SeatHoldGroup.objects.filter(event=event, state="HELD").count() == 72
    assert violations(event) == []


def edit_while_holding(monkeypatch) -> dict[str, float]:
    """An operator's edit holds the event row's lock for 1.5 s; a hold on the event starts 0.3 s in.
    Returns when each finished."""
    event, user = make_event(), UserFactory()
    real_record = core_services.record

    def slow_record(**fields):
        if fields.get("event") == "UPDATED":
            time.sleep(1.5)  # the edit holds the event row's lock meanwhile
        return real_record(**fields)

    monkeypatch.setattr(core_services, "record", slow_record)
    finished = {}

    def edit():
        events_events.event_update_details(event_id=event.pk, actor=None, now=timezone.now(), name="Renamed")
        finished["edit"] = time.monotonic()

    def hold():
        time.sleep(0.3)
        seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=["S1"], now=timezone.now())
        finished["hold"] = time.monotonic()

    results = run_concurrently([edit, hold])

    assert results == [None, None], results
    return finished


def test_an_event_edit_never_makes_new_holds_wait(monkeypatch):
    """``FOR NO KEY UPDATE`` on the event row: a hold, whose group row references the event (FOR KEY
    SHARE), goes through while an operator's edit holds the event's lock."""
    finished = edit_while_holding(monkeypatch)

    assert finished["hold"] < finished["edit"] - 0.5, "the hold waited for the edit's lock"


def test_control_with_for_update_on_the_event_the_hold_waits(monkeypatch):
    def lock_event_for_update(event_id):
        return Event.objects.select_for_update().get(pk=event_id)

    monkeypatch.setattr(locks, "lock_event", lock_event_for_update)

    finished = edit_while_holding(monkeypatch)

    assert finished["hold"] > finished["edit"], "FOR UPDATE conflicts with the hold's FOR KEY SHARE"


def close_while_holding(monkeypatch) -> tuple[list, int, int]:
    """Six users hold a seat each; their holds' statements linger half a second between taking the event's
    lock and their seats' (a ``pg_sleep`` in their condition), and an operator closes sales once they are
    in flight. Returns what each hold got, how many holds the close saw committed just before it
    committed, and how many there are in the end."""
    event, operator = make_event(total_seats=6), house_operator()
    users = [UserFactory() for _ in range(6)]
    seat_locks, record = locks.seat_locks_sql, core_services.record
    seen_by_the_close = []

    def lingering_seat_locks(candidates, *, how, lock_before):
        lingering = sql.SQL("{} AND (SELECT 1 FROM pg_sleep(0.5)) = 1").format(lock_before)
        return seat_locks(candidates, how=how, lock_before=lingering)

    def record_and_count(**fields):
        if fields.get("event") == "SALES_CLOSED":  # the close's last statement before its commit
            seen_by_the_close.append(SeatHoldGroup.objects.filter(event=event).count())
        return record(**fields)

    monkeypatch.setattr(locks, "seat_locks_sql", lingering_seat_locks)
    monkeypatch.setattr(core_services, "record", record_and_count)

    def close():
        time.sleep(0.25)  # the holds are in their statements, lingering
        return events_events.event_sales_set(event_id=event.pk, sales_open=False, actor=operator, now=timezone.now())

    holds = [
        lambda u=u, n=n: seat_holds.seat_hold(event_id=event.pk, user=u, seat_codes=[f"S{n}"], now=timezone.now())
        for n, u in enumerate(users, start=1)
    ]

    results = run_concurrently([close, *holds])

    assert isinstance(results[0], Event), results[0]
    return results[1:], seen_by_the_close[0], SeatHoldGroup.objects.filter(event=event).count()


def assert_no_hold_commits_after_the_close(results, seen_by_the_close, held) -> None:
    assert all(isinstance(r, SeatHoldGroup | rules.SalesClosed) for r in results), results
    assert held == sum(isinstance(r, SeatHoldGroup) for r in results)
    assert seen_by_the_close >= 1, "no hold was in flight when the close came: the test raced nothing"
    assert held == seen_by_the_close, "a hold that read sales open committed after the close"


def test_no_hold_commits_after_a_close_of_sales_commits(monkeypatch):
    """A hold shares the event row (FOR KEY SHARE) and judges ``sales_open`` under it; the close takes
    FOR UPDATE on the row, so it waits for the holds in flight, and a hold that comes later sees it."""
    assert_no_hold_commits_after_the_close(*close_while_holding(monkeypatch))


def test_control_without_the_event_lock_holds_commit_after_the_close(monkeypatch):
    event_sql = locks.hold_event_sql
    monkeypatch.setattr(locks, "hold_event_sql", lambda *, lock_before=None: event_sql())  # read, never locked

    results, seen_by_the_close, held = close_while_holding(monkeypatch)

    assert held > seen_by_the_close, "without the lock the holds judged a stale sales_open"
    with pytest.raises(AssertionError):
        assert_no_hold_commits_after_the_close(results, seen_by_the_close, held)


# --- the cap on the seats one user holds on an event (docs/contract.md §2.7) -------------------------

PAIRS = 8  # one user, eight holds of two seats at once; the cap is ten seats: five win


def race_one_user_over_eight_pairs():
    event, user = make_event(total_seats=2 * PAIRS), UserFactory()
    pairs = [[f"S{2 * n + 1}", f"S{2 * n + 2}"] for n in range(PAIRS)]
    results = run_concurrently(
        [
            lambda codes=codes: seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=codes, now=timezone.now())
            for codes in pairs
        ]
    )
    unexpected = [r for r in results if isinstance(r, Exception) and not isinstance(r, LimitReached)]
    assert not unexpected, unexpected
    return event, user, results


def held_seats(event, user) -> int:
    return sum(SeatHoldGroup.objects.filter(event=event, user=user, state="HELD").values_list("seat_count", flat=True))


def test_one_user_holding_eight_pairs_at_once_gets_exactly_ten_seats():
    event, user, results = race_one_user_over_eight_pairs()

    assert sum(isinstance(r, SeatHoldGroup) for r in results) == 5
    assert held_seats(event, user) == 10
    assert violations(event) == []


def test_control_without_the_holders_lock_the_seat_cap_breaks(monkeypatch):
    """The holder is read, not locked: every racer counts the user's seats from a snapshot taken before any
    of them commits, and inserts its hold."""
    monkeypatch.setattr(locking, "claim_lock_sql", unlocked(User, pause=1.0))

    event, user, _ = race_one_user_over_eight_pairs()

    assert held_seats(event, user) > 10


# --- a hold that waited for a lock while another hold committed under it (docs/decisions/0022) ---------


def hold(event, user, codes):
    return lambda: seat_holds.seat_hold(event_id=event.pk, user=user, seat_codes=codes, now=timezone.now())


def test_a_hold_that_waited_for_the_holders_lock_counts_the_hold_committed_meanwhile():
    """The waiter's snapshot predates the first hold's commit, so its count of the holder's seats is stale
    (four, not eight): it sees so (the holder's claim sequence moved since its snapshot), writes nothing,
    and decides in a transaction: BEGIN, the statement again, ROLLBACK (the refusal). 4 round trips."""
    event, user = make_event(total_seats=20), UserFactory()
    write_hold(event, ["S1", "S2", "S3", "S4"], user=user)

    first, second, trips = behind_an_open_hold(
        hold(event, user, ["S5", "S6", "S7", "S8"]), hold(event, user, ["S9", "S10", "S11", "S12"])
    )

    assert isinstance(first, SeatHoldGroup), first
    assert isinstance(second, LimitReached), second
    assert held_seats(event, user) == 8
    sent = [s for s in trips.statements if "BEGIN" in s or "ROLLBACK" in s]
    assert trips.count == 4 and len(sent) == 2 and "BEGIN" in sent[0] and "ROLLBACK" in sent[1], trips.statements
    assert violations(event) == []


def test_control_without_the_detection_the_waiter_breaks_the_seat_cap(monkeypatch):
    monkeypatch.setattr(locking, "fresh_sql", lambda seen, locked: sql.SQL("true"))
    event, user = make_event(total_seats=20), UserFactory()
    write_hold(event, ["S1", "S2", "S3", "S4"], user=user)

    first, second, _ = behind_an_open_hold(
        hold(event, user, ["S5", "S6", "S7", "S8"]), hold(event, user, ["S9", "S10", "S11", "S12"])
    )

    assert isinstance(first, SeatHoldGroup) and isinstance(second, SeatHoldGroup)
    assert held_seats(event, user) == 12


def test_a_hold_that_waited_for_a_seats_lock_is_refused_by_the_hold_committed_meanwhile():
    """The waiter's snapshot predates the first hold's commit, so it finds S2 free; once it holds S2's lock
    it sees that a hold claimed it since (the seat's claim sequence moved), and refuses it, writing
    nothing: no backstop. One round trip: nothing in it needs a second."""
    event = make_event()
    before = backstop_hits()

    first, second, trips = behind_an_open_hold(
        hold(event, UserFactory(), ["S1", "S2"]), hold(event, UserFactory(), ["S2", "S3"])
    )

    assert isinstance(first, SeatHoldGroup), first
    assert isinstance(second, rules.SeatsUnavailable), second
    assert second.details["seatCodes"] == ["S2"]
    assert backstop_hits() - before == 0
    assert trips.count == 1, trips.statements
    assert SeatClaim.objects.filter(event=event).count() == 2 and violations(event) == []


def test_control_without_the_detection_the_seats_waiter_counts_a_backstop(monkeypatch):
    monkeypatch.setattr(locking, "fresh_sql", lambda seen, locked: sql.SQL("true"))
    event = make_event()
    before = backstop_hits()

    first, second, _ = behind_an_open_hold(
        hold(event, UserFactory(), ["S1", "S2"]), hold(event, UserFactory(), ["S2", "S3"])
    )

    assert isinstance(first, SeatHoldGroup) and isinstance(second, rules.SeatsUnavailable)
    assert backstop_hits() - before == 1
    assert SeatClaim.objects.filter(event=event).count() == 2 and violations(event) == []
