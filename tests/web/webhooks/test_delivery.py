"""The audit-event job against a real receiver on 127.0.0.1 (docs/contract.md §3.7)."""

import json
import socket
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook, WebhookVerificationError

from core.audit import services as audit
from core.audit.models import AuditEvent
from reservations.models import Car
from reservations.services import reservation_cancel, reservation_confirm, reservation_hold, reservations_expire_due
from tests.factories import house
from tests.reservations.factories import CarFactory
from web.webhooks import services
from web.webhooks.models import WebhookAttempt, WebhookDelivery
from web.webhooks.services import webhooks_deliver


def verified(received, secret: str) -> dict:
    return Webhook(secret).verify(received.body, received.headers)


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def events_of(labels, n: int) -> list[AuditEvent]:
    """``n`` audit events of each of the house's cars labelled ``labels`` (made here), interleaved: the house's
    endpoints receive them (an endpoint receives only its organisation's events)."""
    cars = {label: CarFactory(label=label).pk for label in labels}
    with transaction.atomic():
        return audit.record_many(
            [
                audit.event(subject=audit.Subject("car", cars[label]), event="UPDATED", metadata={"n": i})
                for i in range(n)
                for label in labels
            ]
        )


def subject_id(label: str) -> str:
    """The audit subject id of the car ``events_of`` labelled ``label``."""
    return str(Car.objects.get(label=label).pk)


@pytest.mark.django_db
def test_hold_confirm_cancel_and_expiry_reach_the_receiver_signed(receiver, endpoint, user):
    now = timezone.now()
    confirmed = reservation_hold(car_id=CarFactory().pk, buyer=user, hold_minutes=5, now=now)
    reservation_confirm(reservation_id=confirmed.pk, user=user, now=now)
    cancelled = reservation_hold(car_id=CarFactory().pk, buyer=user, hold_minutes=5, now=now)
    reservation_cancel(reservation_id=cancelled.pk, user=user, now=now, reason="changed my mind")
    expired = reservation_hold(car_id=CarFactory().pk, buyer=user, hold_minutes=1, now=now)
    reservations_expire_due(now=now + timedelta(minutes=2))

    run = webhooks_deliver()

    assert run.delivered == 6
    bodies = [verified(r, endpoint.secret) for r in receiver.received]
    assert [(b["type"], b["data"]["subject"]["id"]) for b in bodies] == [
        ("reservation.created", str(confirmed.pk)),
        ("reservation.confirmed", str(confirmed.pk)),
        ("reservation.created", str(cancelled.pk)),
        ("reservation.cancelled", str(cancelled.pk)),
        ("reservation.created", str(expired.pk)),
        ("reservation.expired", str(expired.pk)),
    ]
    data = bodies[3]["data"]
    assert data["fromState"] == "HELD" and data["toState"] == "CANCELLED" and data["event"] == "CANCELLED"
    assert data["actor"] == f"user:{user.pk}" and data["metadata"] == {"reason": "changed my mind"}
    assert data["subject"] == {"type": "reservation", "id": str(cancelled.pk)}
    assert bodies[5]["data"]["actor"] == "system:expire_holds"
    received = receiver.received[0]
    assert received.headers["content-type"] == "application/json" and received.path == "/hooks"
    assert abs(int(received.headers["webhook-timestamp"]) - time.time()) < 60
    with pytest.raises(WebhookVerificationError):
        Webhook(services.new_secret()).verify(received.body, received.headers)
    assert not AuditEvent.objects.filter(delivered_at__isnull=True).exists()
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"DELIVERED"}


@pytest.mark.django_db
def test_a_failing_receiver_is_retried_in_order_and_other_subjects_do_not_wait(receiver, endpoint, settings):
    settings.WEBHOOK_RETRY_DELAYS = [60, 60, 60]
    failures, ids = {}, {}

    def answer(received):
        body = json.loads(received.body)
        if body["data"]["subject"]["id"] == ids["a"] and body["data"]["metadata"]["n"] == 0:
            failures[received.id] = failures.get(received.id, 0) + 1
            return (500, {}) if failures[received.id] <= 2 else (200, {})
        return 200, {}

    receiver.answer = answer
    a0, b0, a1, b1 = events_of(["a", "b"], 2)
    ids["a"] = subject_id("a")

    webhooks_deliver()
    assert [json.loads(b)["data"]["id"] for b in receiver.bodies()] == [a0.pk, b0.pk, b1.pk]
    webhooks_deliver(now=later(100))
    webhooks_deliver(now=later(200))

    assert [json.loads(b)["data"]["id"] for b in receiver.bodies()] == [a0.pk, b0.pk, b1.pk, a0.pk, a0.pk, a1.pk]
    first = WebhookDelivery.objects.get(event=a0)
    assert (first.status, first.attempts, first.last_status_code) == ("DELIVERED", 3, 200)
    assert [a.status_code for a in WebhookAttempt.objects.filter(delivery=first)] == [500, 500, 200]
    assert len({r.id for r in receiver.received if json.loads(r.body)["data"]["id"] == a0.pk}) == 1  # same webhook-id
    assert WebhookDelivery.objects.filter(status="DELIVERED").count() == 4


@pytest.mark.django_db
def test_the_retries_run_out_on_the_schedule_then_the_delivery_failed(receiver, endpoint, settings):
    settings.WEBHOOK_RETRY_DELAYS = [10, 100]
    receiver.answer = lambda received: (503, {})
    events_of(["a"], 1)

    webhooks_deliver()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "PENDING" and later(7) < delivery.next_attempt_at < later(13)
    webhooks_deliver(now=later(20))
    delivery.refresh_from_db()
    assert delivery.status == "PENDING" and later(70) < delivery.next_attempt_at < later(130)
    webhooks_deliver(now=later(200))

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error, delivery.next_attempt_at) == (
        "FAILED",
        3,
        "HTTP 503",
        None,
    )
    assert len(receiver.received) == 3


@pytest.mark.django_db
def test_a_receiver_that_hangs_past_the_timeout_is_an_attempt_that_timed_out(receiver, endpoint, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5

    def answer(received):
        time.sleep(2)
        return 200, {}

    receiver.answer = answer
    events_of(["a"], 1)

    started = time.monotonic()
    run = webhooks_deliver()

    assert time.monotonic() - started < 1.8
    assert run.retrying == 1
    attempt = WebhookAttempt.objects.get()
    assert attempt.status_code is None and attempt.error.startswith("timeout") and attempt.duration_ms >= 450
    assert WebhookDelivery.objects.get().status == "PENDING"


@pytest.mark.django_db
def test_a_receiver_that_is_down_is_an_attempt_refused(settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = True
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    services.webhook_endpoint_create(organisation_id=house().pk, url=f"http://127.0.0.1:{port}/", now=timezone.now())
    events_of(["a"], 1)

    webhooks_deliver()

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "PENDING" and delivery.last_status_code is None
    assert delivery.last_error.startswith("connection failed") and "refused" in delivery.last_error.lower()


@pytest.mark.django_db
def test_a_redirect_is_not_followed(receiver, endpoint):
    receiver.answer = lambda received: (
        (302, {"Location": receiver.url + "/elsewhere"}) if received.path == "/hooks" else (200, {})
    )
    events_of(["a"], 1)

    webhooks_deliver()

    assert [r.path for r in receiver.received] == ["/hooks"]
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code, delivery.last_error) == ("PENDING", 302, "HTTP 302")


@pytest.mark.django_db
def test_a_private_url_is_refused_at_delivery_when_private_urls_are_not_allowed(receiver, endpoint, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = False
    events_of(["a"], 1)

    webhooks_deliver()

    assert receiver.received == []
    assert (
        WebhookDelivery.objects.get().last_error
        == "refused: 127.0.0.1 is a private, loopback or link-local address (127.0.0.1)"
    )


@pytest.mark.django_db
def test_only_the_event_types_an_endpoint_asked_for_are_sent(receiver, user):
    services.webhook_endpoint_create(
        organisation_id=house().pk, url=receiver.url, event_types=["reservation.expired"], now=timezone.now()
    )
    now = timezone.now()
    reservation_hold(car_id=CarFactory().pk, buyer=user, hold_minutes=1, now=now)
    reservations_expire_due(now=now + timedelta(minutes=2))

    webhooks_deliver()

    assert [json.loads(b)["type"] for b in receiver.bodies()] == ["reservation.expired"]
    assert not AuditEvent.objects.filter(delivered_at__isnull=True).exists()


@pytest.mark.django_db
def test_after_a_rotation_both_secrets_verify_for_a_day(receiver, endpoint):
    old = endpoint.secret
    new = services.webhook_endpoint_rotate_secret(endpoint_id=endpoint.pk, now=timezone.now()).secret
    events_of(["a"], 1)

    webhooks_deliver()

    [received] = receiver.received
    assert len(received.headers["webhook-signature"].split(" ")) == 2
    assert verified(received, old) == verified(received, new)
    endpoint.refresh_from_db()
    assert endpoint.signing_secrets(timezone.now() + timedelta(hours=25)) == [new]


@pytest.mark.django_db
def test_an_endpoint_failing_for_five_days_is_disabled(receiver, endpoint):
    receiver.answer = lambda received: (500, {})
    type(endpoint).objects.filter(pk=endpoint.pk).update(failing_since=timezone.now() - timedelta(days=5, minutes=1))
    events_of(["a"], 1)

    webhooks_deliver()

    endpoint.refresh_from_db()
    assert not endpoint.active and "every delivery failed for 5 days" in endpoint.disabled_reason
    events_of(["a"], 1)
    webhooks_deliver(now=later(3600))
    assert len(receiver.received) == 1  # a disabled endpoint gets nothing more


@pytest.mark.django_db
def test_a_success_clears_the_failing_streak(receiver, endpoint):
    type(endpoint).objects.filter(pk=endpoint.pk).update(failing_since=timezone.now() - timedelta(days=4))
    events_of(["a"], 1)

    webhooks_deliver()

    endpoint.refresh_from_db()
    assert endpoint.active and endpoint.failing_since is None and endpoint.last_success_at is not None


@pytest.mark.django_db
def test_retry_now_makes_a_failed_delivery_due_once_more(receiver, endpoint, settings):
    settings.WEBHOOK_RETRY_DELAYS = []
    receiver.answer = lambda received: (500, {})
    events_of(["a"], 1)
    webhooks_deliver()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "FAILED"

    receiver.answer = lambda received: (200, {})
    services.webhook_delivery_retry_now(delivery_id=delivery.pk, now=timezone.now())
    webhooks_deliver()

    delivery.refresh_from_db()
    assert delivery.status == "DELIVERED" and len(receiver.received) == 2


@pytest.mark.django_db
def test_prune_drops_delivered_attempts_past_the_retention(receiver, endpoint):
    events_of(["a", "b"], 1)
    webhooks_deliver()
    old = timezone.now() - timedelta(days=31)
    WebhookDelivery.objects.filter(event__subject_id=subject_id("a")).update(delivered_at=old)

    assert services.webhook_deliveries_prune(now=timezone.now()) == 1

    assert list(WebhookDelivery.objects.values_list("event__subject_id", flat=True)) == [subject_id("b")]
    assert WebhookAttempt.objects.count() == 1


@pytest.mark.django_db
def test_events_with_no_endpoint_are_handed_on_and_not_kept_waiting():
    events_of(["a"], 3)

    assert webhooks_deliver().fanned_out == 3

    assert not AuditEvent.objects.filter(delivered_at__isnull=True).exists()
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_the_audit_trail_stays_append_only_beside_the_delivery_column():
    [event] = events_of(["a"], 1)

    with pytest.raises(Exception, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(event_type="CANCELLED")
