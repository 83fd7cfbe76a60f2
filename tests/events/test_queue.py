"""The admission queue of an on-sale (docs/contract.md §5): switching it on, joining, polling, the
admission job's order and rate, and the seat holds it gates."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import F
from django.utils import timezone

from core import errors
from core.audit.models import AuditEvent
from core.audit.services import trail
from events import queue
from events.models import Event, EventQueue, QueueEntry
from events.services import events as events_events
from tests.events.factories import make_event
from tests.factories import UserFactory
from web.webhooks.catalogue import event_type

pytestmark = pytest.mark.django_db


def queued_event(*, rate: int = 60, window: int = 10, **fields) -> Event:
    event = make_event(**fields)
    return events_events.event_update_details(
        event_id=event.pk,
        actor=None,
        now=timezone.now(),
        queue_enabled=True,
        admitted_per_minute=rate,
        admission_window_minutes=window,
    )


def join(api, event):
    return api.post(f"/api/events/{event.pk}/queue")


def poll(api, event, token):
    return api.get(f"/api/events/{event.pk}/queue/{token}")


def reserve(api, event, token=None, **body):
    headers = {"HTTP_X_QUEUE_TOKEN": token} if token else {}
    return api.post(f"/api/events/{event.pk}/seats/reserve", body or {"quantity": 1}, format="json", **headers)


def admit(event, *, seconds: float) -> tuple[int, int]:
    """One admission run ``seconds`` after the queue's first join (when its admissions start accruing)."""
    start = QueueEntry.objects.filter(event=event).order_by("number").values_list("joined_at", flat=True)[0]
    return queue.queue_admit(event_id=event.pk, now=start + timedelta(seconds=seconds))


def joined(event, n: int) -> list[QueueEntry]:
    return [queue.queue_join(event_id=event.pk, user=UserFactory(), now=timezone.now())[0] for _ in range(n)]


def error_code(response) -> str:
    return response.json()["error"]["code"]


# --- switching it on: PATCH /api/events/{id} and the event's JSON --------------------------------------


def test_an_operator_puts_an_event_behind_a_queue(staff_api):
    event = make_event()

    response = staff_api.patch(
        f"/api/events/{event.pk}",
        {"queueEnabled": True, "admittedPerMinute": 120, "admissionWindowMinutes": 15},
        format="json",
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["queueEnabled"], body["admittedPerMinute"], body["admissionWindowMinutes"]) == (True, 120, 15)
    assert staff_api.get(f"/api/events/{event.pk}").json()["queueEnabled"] is True
    [updated] = [e for e in trail(event) if e.event_type == "UPDATED"]
    assert updated.metadata["fields"] == ["queue_enabled", "admitted_per_minute", "admission_window_minutes"]
    assert updated.metadata["from"] == {
        "queue_enabled": False,
        "admitted_per_minute": 60,
        "admission_window_minutes": 10,
    }


def test_a_new_event_has_no_queue(api):
    body = api.get(f"/api/events/{make_event().pk}").json()

    assert (body["queueEnabled"], body["admittedPerMinute"], body["admissionWindowMinutes"]) == (False, 60, 10)


def test_patch_changes_the_details_too_and_nothing_given_changes_nothing(staff_api):
    event = make_event()

    renamed = staff_api.patch(f"/api/events/{event.pk}", {"name": "Encore", "holdMinutes": 7}, format="json")
    unchanged = staff_api.patch(f"/api/events/{event.pk}", {}, format="json")

    assert (renamed.json()["name"], renamed.json()["holdMinutes"]) == ("Encore", 7)
    assert unchanged.status_code == 200
    assert [e.metadata["fields"] for e in trail(event) if e.event_type == "UPDATED"] == [["name", "hold_minutes"]]


def test_only_operators_patch_an_event(api):
    event = make_event()

    response = api.patch(f"/api/events/{event.pk}", {"queueEnabled": True}, format="json")

    assert response.status_code == 403
    assert not Event.objects.get(pk=event.pk).queue_enabled


@pytest.mark.parametrize(
    "body",
    [{"admittedPerMinute": 0}, {"admittedPerMinute": 10_001}, {"admissionWindowMinutes": 0}, {"queueEnabled": "x"}],
)
def test_patch_refuses_a_rate_or_window_out_of_range(staff_api, body):
    response = staff_api.patch(f"/api/events/{make_event().pk}", body, format="json")

    assert response.status_code == 400
    assert error_code(response) == "validation_error"
    assert list(response.json()["error"]["details"]["fields"]) == list(body)


def test_patch_of_a_missing_event_is_404(staff_api):
    assert staff_api.patch("/api/events/999999", {"queueEnabled": True}, format="json").status_code == 404


def test_the_service_refuses_a_window_out_of_range():
    event = make_event()

    with pytest.raises(errors.ValidationFailed):
        events_events.event_update_details(
            event_id=event.pk, actor=None, now=timezone.now(), admission_window_minutes=121
        )


# --- joining and polling --------------------------------------------------------------------------------


def test_joining_gives_a_token_and_a_place_in_line(api, user):
    event = queued_event()
    joined(event, 2)

    response = join(api, event)

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["position"], body["state"], body["admittedUntil"], body["eventId"]) == (3, "WAITING", None, event.pk)
    assert len(body["token"]) >= 40
    entry = QueueEntry.objects.get(token=body["token"])
    assert (entry.user_id, entry.number) == (user.pk, 3)
    [created] = trail(queue.queue_subject(entry.pk))
    assert (created.event_type, created.to_state, created.actor_id) == ("CREATED", "WAITING", user.pk)
    assert event_type(created) == "queue_entry.created"


def test_joining_again_returns_the_same_entry_with_200(api):
    event = queued_event()
    first = join(api, event).json()

    again = join(api, event)

    assert again.status_code == 200
    assert again.json() == first
    assert QueueEntry.objects.filter(event=event).count() == 1
    assert EventQueue.objects.get(pk=event.pk).joined == 1, "a second join takes no number"


def test_joining_an_event_without_a_queue_is_409(api):
    event = make_event()

    response = join(api, event)

    assert response.status_code == 409
    assert error_code(response) == "queue_disabled"
    assert not QueueEntry.objects.exists()


def test_joining_a_missing_event_is_404(api):
    assert join(api, Event(pk=999999)).status_code == 404


def test_joining_an_event_that_took_place_is_409(api):
    event = queued_event(event_date=timezone.now() - timedelta(days=1))

    response = join(api, event)

    assert (response.status_code, error_code(response)) == (409, "sales_closed")


def test_the_position_counts_down_as_those_ahead_are_admitted(api):
    event = queued_event(rate=60)
    joined(event, 3)
    token = join(api, event).json()["token"]

    admit(event, seconds=2)

    assert poll(api, event, token).json()["position"] == 2
    admit(event, seconds=4)
    assert poll(api, event, token).json()["position"] == 0
    assert poll(api, event, token).json()["state"] == "ADMITTED"


def test_only_the_owner_or_an_operator_reads_an_entry(api, client_for, staff_api):
    event = queued_event()
    token = join(api, event).json()["token"]

    assert poll(client_for(UserFactory()), event, token).status_code == 403
    assert poll(staff_api, event, token).status_code == 200
    assert poll(api, event, token).status_code == 200


def test_a_token_of_another_event_or_none_at_all_is_404(api):
    event, other = queued_event(), queued_event()
    token = join(api, event).json()["token"]

    assert poll(api, other, token).status_code == 404
    assert poll(api, event, "not-a-token").status_code == 404
    assert poll(api, event, "a%00b").status_code == 404, "a token never issued is not looked up"


def test_an_admission_past_its_window_reads_as_expired_before_the_job_writes_it(api):
    event = queued_event(window=1)
    token = join(api, event).json()["token"]
    admit(event, seconds=1)
    QueueEntry.objects.filter(token=token).update(
        admitted_at=timezone.now() - timedelta(minutes=2), admitted_until=timezone.now() - timedelta(minutes=1)
    )

    body = poll(api, event, token).json()

    assert (body["state"], body["position"]) == ("EXPIRED", 0)
    assert QueueEntry.objects.get(token=token).state == "ADMITTED"


# --- admission: order, rate, window -------------------------------------------------------------------


def test_admission_follows_the_join_order_at_the_rate():
    event = queued_event(rate=60, window=10)
    entries = joined(event, 10)

    assert admit(event, seconds=0.5) == (0, 0)
    assert admit(event, seconds=3) == (3, 0)
    assert admit(event, seconds=3.9) == (0, 0), "the next admission accrues at 4 s"
    assert admit(event, seconds=6) == (3, 0)

    admitted = QueueEntry.objects.filter(event=event, state="ADMITTED").order_by("number")
    assert [e.pk for e in admitted] == [e.pk for e in entries[:6]]
    first = admitted[0]
    assert first.admitted_until - first.admitted_at == timedelta(minutes=10)
    queue_row = EventQueue.objects.get(pk=event.pk)
    assert (queue_row.joined, queue_row.admitted_through) == (10, 6)


def test_an_idle_queue_saves_up_at_most_ten_seconds_of_admissions():
    event = queued_event(rate=60)
    joined(event, 20)

    assert admit(event, seconds=3600) == (10, 0)


def test_a_slow_queue_still_admits_one_at_a_time():
    event = queued_event(rate=5)
    joined(event, 3)

    assert admit(event, seconds=3600) == (1, 0)
    assert admit(event, seconds=3605) == (0, 0)
    assert admit(event, seconds=3612) == (1, 0)


def test_nothing_is_admitted_while_sales_are_closed_or_the_queue_is_off():
    event = queued_event(rate=60)
    joined(event, 5)
    events_events.event_sales_set(event_id=event.pk, sales_open=False, actor=None, now=timezone.now())

    assert admit(event, seconds=30) == (0, 0)

    events_events.event_sales_set(event_id=event.pk, sales_open=True, actor=None, now=timezone.now())
    events_events.event_update_details(event_id=event.pk, actor=None, now=timezone.now(), queue_enabled=False)
    assert admit(event, seconds=30) == (0, 0)


def test_an_admission_whose_window_passed_expires_and_is_audited():
    event = queued_event(rate=60, window=1)
    [entry] = joined(event, 1)
    admit(event, seconds=1)

    assert admit(event, seconds=62) == (0, 1)

    entry.refresh_from_db()
    assert entry.state == "EXPIRED"
    events = [(e.event_type, e.from_state, e.to_state, e.actor_label) for e in trail(queue.queue_subject(entry.pk))]
    assert events == [
        ("CREATED", "", "WAITING", f"user:{entry.user_id}"),
        ("ADMITTED", "WAITING", "ADMITTED", queue.ADMIT_ACTOR),
        ("EXPIRED", "ADMITTED", "EXPIRED", queue.ADMIT_ACTOR),
    ]
    assert [event_type(e) for e in trail(queue.queue_subject(entry.pk))][1:] == [
        "queue_entry.admitted",
        "queue_entry.expired",
    ]


def test_the_job_runs_every_queue_with_work_and_the_command_says_what_it_did(capsys):
    busy, quiet = queued_event(rate=600), queued_event(rate=600)
    joined(busy, 3)
    joined(quiet, 1)
    EventQueue.objects.update(credit_from=timezone.now() - timedelta(seconds=10))

    call_command("admit_queues")

    assert capsys.readouterr().out.strip() == "admitted 4, expired 0"
    assert not QueueEntry.objects.filter(state="WAITING").exists()
    assert queue.queues_admit_due(now=timezone.now()) == {"admitted": 0, "expired": 0}


def test_admit_queues_explains_itself(capsys):
    with pytest.raises(SystemExit):
        call_command("admit_queues", "--help")

    assert "ADMIT_QUEUES_EVERY_SECONDS" in capsys.readouterr().out


# --- the gate on seat holds ------------------------------------------------------------------------------


def test_an_admitted_user_holds_seats_with_the_token(api):
    event = queued_event()
    token = join(api, event).json()["token"]
    admit(event, seconds=1)

    response = reserve(api, event, token, seatCodes=["S1", "S2"])

    assert response.status_code == 201, response.content


@pytest.mark.parametrize("header", ["none", "waiting", "lapsed", "someone else's"])
def test_a_hold_without_an_admission_is_403_not_admitted(api, header):
    event = queued_event()
    token = join(api, event).json()["token"]
    other = queue.queue_join(event_id=event.pk, user=UserFactory(), now=timezone.now())[0]
    if header in ("lapsed", "someone else's"):
        admit(event, seconds=5)
    if header == "lapsed":
        QueueEntry.objects.filter(token=token).update(
            admitted_at=timezone.now() - timedelta(minutes=20), admitted_until=timezone.now() - timedelta(seconds=1)
        )
    sent = {"none": None, "waiting": token, "lapsed": token, "someone else's": other.token}[header]

    response = reserve(api, event, sent, seatCodes=["S1"])

    assert response.status_code == 403, response.content
    assert error_code(response) == "not_admitted"
    assert not event.hold_groups.exists()


def test_a_token_of_a_shape_never_issued_is_not_admitted(api):
    event = queued_event()

    response = reserve(api, event, "a\x00b")

    assert (response.status_code, error_code(response)) == (403, "not_admitted")


def test_a_token_of_another_event_does_not_admit(api):
    event, other = queued_event(), queued_event()
    token = join(api, other).json()["token"]
    admit(other, seconds=1)

    response = reserve(api, event, token)

    assert error_code(response) == "not_admitted"


def test_an_operator_holds_for_a_user_without_a_token(staff_api, user):
    event = queued_event()

    response = reserve(staff_api, event, userId=user.pk, quantity=2)

    assert response.status_code == 201, response.content


def test_closed_sales_are_said_before_the_queue(api):
    event = queued_event(sales_open=False)

    assert error_code(reserve(api, event)) == "sales_closed"


def test_holds_on_an_event_without_a_queue_need_no_token(api):
    event = make_event()

    assert reserve(api, event, "whatever").status_code == 201


def test_a_queue_turned_off_lets_everyone_hold_again(api):
    event = queued_event()
    events_events.event_update_details(event_id=event.pk, actor=None, now=timezone.now(), queue_enabled=False)

    assert reserve(api, event).status_code == 201
    assert AuditEvent.objects.filter(subject_type="event", event_type="UPDATED").count() == 2


def test_the_trail_records_a_runs_admissions_in_number_order_wherever_the_rows_lie():
    """An UPDATE returns its rows in the order it finds them in the table, which is not the numbers' once
    rows have moved (any update writes a new version, and a vacuumed table reuses its space): the
    trail must still say 1, 2, 3. (The 500 joins of test_queue_concurrency.py showed it, now and then.)"""
    event = queued_event(rate=600)
    entries = joined(event, 3)
    QueueEntry.objects.filter(pk=entries[0].pk).update(state=F("state"))  # number 1's row now lies after 3's
    with connection.cursor() as cursor:  # the planner reads the table in its own order (as it may with many rows)
        cursor.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")

    admit(event, seconds=60)

    admitted = AuditEvent.objects.filter(subject_type="queue_entry", event_type="ADMITTED").order_by("pk")
    assert [e.metadata["number"] for e in admitted] == [1, 2, 3]
