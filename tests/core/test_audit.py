import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.audit import services as audit
from core.audit.models import AuditEvent
from core.middleware import request_id_var
from tests.reservations.factories import CarFactory


@pytest.mark.django_db(transaction=True)
def test_record_refuses_to_write_outside_a_transaction():
    with pytest.raises(RuntimeError):
        audit.record(subject=CarFactory(), event="CREATED")


@pytest.mark.django_db
def test_record_names_the_subject_actor_and_request(user):
    car = CarFactory()
    token = request_id_var.set("req-abc")
    try:
        with transaction.atomic():
            event = audit.record(subject=car, event="CREATED", to_state="ACTIVE", actor=user, metadata={"a": 1})
    finally:
        request_id_var.reset(token)

    assert (event.subject_type, event.subject_id, event.actor_label, event.request_id) == (
        "car",
        str(car.pk),
        f"user:{user.pk}",
        "req-abc",
    )
    assert list(audit.trail(car)) == [event]


@pytest.mark.django_db
def test_a_subject_that_is_not_a_row():
    with transaction.atomic():
        event = audit.record(subject=audit.Subject("seat_hold_group", "9b1d"), event="RELEASED", actor="system:test")

    assert (event.subject_type, event.subject_id, event.actor_label) == ("seat_hold_group", "9b1d", "system:test")


@pytest.mark.django_db
def test_the_trail_cannot_be_rewritten():
    with transaction.atomic():
        event = audit.record(subject=CarFactory(), event="CREATED", to_state="ACTIVE")

    with pytest.raises(IntegrityError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(to_state="INACTIVE")


@pytest.mark.django_db
def test_delivery_may_be_marked():
    with transaction.atomic():
        event = audit.record(subject=CarFactory(), event="CREATED", to_state="ACTIVE")

    AuditEvent.objects.filter(pk=event.pk).update(delivered_at=timezone.now())

    event.refresh_from_db()
    assert event.delivered_at is not None
