"""The admission queue under real contention (docs/decisions/0017-admission-queue.md): many joins at
once, admission running beside them, two admission runs at once, and the holds the admissions gate."""

import contextlib
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.utils import timezone

from core.audit.models import AuditEvent
from core.metrics import CONSTRAINT_BACKSTOPS
from events import locks, queue
from events.models import EventQueue, QueueEntry
from events.services import events as events_events
from events.services import rules, seat_holds
from tests.concurrency import run_concurrently
from tests.events.factories import make_event, violations
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency, pytest.mark.slow]

USERS = 500
# The 500 joins come from this many connections at once, each joining its share one after the other:
# one connection per user would pass the server's max_connections (100), shared with other test runs.
JOINERS = 25


def backstop_hits() -> float:
    return CONSTRAINT_BACKSTOPS.labels("queue_admission_waiting_only")._value.get()


def queued_event(*, seats: int, rate: int):
    event = make_event(total_seats=seats)
    return events_events.event_update_details(
        event_id=event.pk, actor=None, now=timezone.now(), queue_enabled=True, admitted_per_minute=rate
    )


def admissions_per_entry(event) -> Counter:
    events = AuditEvent.objects.filter(subject_type="queue_entry", event_type="ADMITTED", metadata__eventId=event.pk)
    return Counter(int(subject_id) for subject_id in events.values_list("subject_id", flat=True))


def assert_admitted_in_join_order(event) -> int:
    """The admitted entries are exactly the first numbers, each admitted once; returns how many."""
    row = EventQueue.objects.get(pk=event.pk)
    states = dict(QueueEntry.objects.filter(event=event).values_list("number", "state"))
    assert sorted(states) == list(range(1, row.joined + 1)), "numbers are gapless: 1 … joined"
    assert all(states[n] == "ADMITTED" for n in range(1, row.admitted_through + 1))
    assert all(states[n] == "WAITING" for n in range(row.admitted_through + 1, row.joined + 1))
    per_entry = admissions_per_entry(event)
    assert set(per_entry.values()) <= {1}, "an entry admitted twice"
    assert len(per_entry) == row.admitted_through
    return row.admitted_through


def test_five_hundred_joining_at_once_are_admitted_in_join_order_and_only_the_admitted_hold():
    event = queued_event(seats=20, rate=10_000)
    users = [UserFactory() for _ in range(USERS)]
    shares = [users[i::JOINERS] for i in range(JOINERS)]
    finished: list[int] = []

    def joiner(share):
        def run():
            try:
                return [queue.queue_join(event_id=event.pk, user=u, now=timezone.now())[0] for u in share]
            finally:
                finished.append(1)

        return run

    def admitter():
        """Admission runs beside the joins: it must never pass over a join still in flight."""
        runs = admitted = 0
        while len(finished) < JOINERS or runs < 2:
            admitted += queue.queue_admit(event_id=event.pk, now=timezone.now())[0]
            runs += 1
            time.sleep(0.005)
        return admitted

    results = run_concurrently([*(joiner(share) for share in shares), admitter], timeout=120)
    joined, admitted_meanwhile = results[:-1], results[-1]

    for share_entries in joined:
        assert not isinstance(share_entries, Exception), share_entries
        numbers = [e.number for e in share_entries]
        assert numbers == sorted(numbers), "a join that returned before another began is ahead of it"
    entries = [e for share_entries in joined for e in share_entries]
    assert sorted(e.number for e in entries) == list(range(1, USERS + 1))
    assert len({e.token for e in entries}) == USERS
    assert isinstance(admitted_meanwhile, int) and admitted_meanwhile > 0, admitted_meanwhile
    assert_admitted_in_join_order(event)

    # Everyone left is admitted, by runs in join order.
    while QueueEntry.objects.filter(event=event, state="WAITING").exists():
        queue.queue_admit(event_id=event.pk, now=timezone.now() + timedelta(minutes=1))
    assert assert_admitted_in_join_order(event) == USERS
    admitted_order = AuditEvent.objects.filter(
        subject_type="queue_entry", event_type="ADMITTED", metadata__eventId=event.pk
    ).order_by("pk")
    assert [e.metadata["number"] for e in admitted_order] == list(range(1, USERS + 1))

    # Holds at once: the first 30 admitted and 20 who are not (their admission lapsed) — 20 seats.
    by_number = {e.number: e for e in entries}
    QueueEntry.objects.filter(event=event, number__gt=30).update(
        admitted_at=timezone.now() - timedelta(hours=1), admitted_until=timezone.now() - timedelta(minutes=1)
    )
    holders = [by_number[n] for n in range(1, 51)]

    def hold(entry):
        return lambda: seat_holds.seat_hold(
            event_id=event.pk, user=entry.user, quantity=1, now=timezone.now(), queue_token=entry.token
        )

    outcomes = run_concurrently([hold(e) for e in holders])

    admitted_outcomes, lapsed_outcomes = outcomes[:30], outcomes[30:]
    held = [o for o in admitted_outcomes if not isinstance(o, Exception)]
    assert len(held) == 20, admitted_outcomes
    assert {type(o) for o in admitted_outcomes if isinstance(o, Exception)} <= {rules.SeatsUnavailable}
    assert all(isinstance(o, rules.NotAdmitted) for o in lapsed_outcomes), lapsed_outcomes
    assert event.hold_groups.count() == 20
    assert violations(event) == []


def test_control_without_the_queue_row_lock_joins_take_the_same_number(monkeypatch):
    """A number read from the entries instead of taken from the queue row under its lock: joins at once
    read the same last number, and only the unique constraint stops the second of each."""
    event = queued_event(seats=10, rate=60)
    queue.queue_join(event_id=event.pk, user=UserFactory(), now=timezone.now())
    everyone_has_read = threading.Barrier(8, timeout=10)

    def unlocked_number(event_id, *, now):
        last = QueueEntry.objects.filter(event_id=event_id).order_by("-number").values_list("number", flat=True)[0]
        with contextlib.suppress(threading.BrokenBarrierError):
            everyone_has_read.wait()
        return last + 1, 0

    monkeypatch.setattr(locks, "take_queue_number", unlocked_number)
    users = [UserFactory() for _ in range(8)]

    results = run_concurrently(
        [lambda u=u: queue.queue_join(event_id=event.pk, user=u, now=timezone.now()) for u in users]
    )

    refused = [r for r in results if isinstance(r, IntegrityError)]
    assert len(refused) == 7, results
    assert "queue_entry_number_unique_per_event" in str(refused[0])


def race_two_admission_runs(event) -> list:
    start = EventQueue.objects.get(pk=event.pk).credit_from
    at = start + timedelta(minutes=1)
    return run_concurrently([lambda: queue.queue_admit(event_id=event.pk, now=at)] * 2)


def two_runs(monkeypatch=None) -> tuple:
    event = queued_event(seats=10, rate=900)  # 150 accrue in ACCRUAL_CAP
    for _ in range(200):
        queue.queue_join(event_id=event.pk, user=UserFactory(), now=timezone.now())
    before = backstop_hits()
    results = race_two_admission_runs(event)
    return event, results, backstop_hits() - before


def assert_each_admitted_once(event, results, backstops) -> None:
    assert not any(isinstance(r, Exception) for r in results), results
    assert sorted(admitted for admitted, _ in results) == [0, 150], "the second run finds nothing accrued"
    assert assert_admitted_in_join_order(event) == 150
    assert backstops == 0, "the queue row's lock, not the WAITING predicate, must decide"


def test_two_admission_runs_at_once_admit_each_entry_once():
    assert_each_admitted_once(*two_runs())


def test_control_without_the_queue_lock_two_runs_admit_the_same_numbers(monkeypatch):
    everyone_has_read = threading.Barrier(2, timeout=10)

    def unlocked_queue(event_id):
        row = EventQueue.objects.select_related("event").filter(pk=event_id).first()
        # Both runs read the queue row before either writes: the window the lock closes, made certain.
        with contextlib.suppress(threading.BrokenBarrierError):
            everyone_has_read.wait()
        return row

    monkeypatch.setattr(locks, "lock_event_queue", unlocked_queue)

    event, results, backstops = two_runs()

    assert backstops > 0, "without the lock both runs pick the same numbers; only the WAITING predicate stops them"
    with pytest.raises(AssertionError):
        assert_each_admitted_once(event, results, backstops)


def test_one_user_joining_twice_at_once_gets_one_entry_and_leaves_no_gap():
    event = queued_event(seats=10, rate=60)
    user = UserFactory()

    results = run_concurrently([lambda: queue.queue_join(event_id=event.pk, user=user, now=timezone.now())] * 8)

    assert not any(isinstance(r, Exception) for r in results), results
    assert len({entry.pk for entry, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert EventQueue.objects.get(pk=event.pk).joined == 1, "the losers' numbers were rolled back"
    queue.queue_join(event_id=event.pk, user=UserFactory(), now=timezone.now())
    assert list(QueueEntry.objects.filter(event=event).values_list("number", flat=True)) == [1, 2]
