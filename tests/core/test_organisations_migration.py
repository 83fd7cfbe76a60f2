"""The migrations that gave resources their organisation (docs/decisions/0025-organisations.md): a database
at the migrations before them, with data, goes forward into one default organisation; a fresh one gets none."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from core.organisations.models import Membership, Organisation
from events.models import Event
from reservations.models import Car
from slots.models import Availability, Slot
from web.webhooks.models import WebhookEndpoint

BEFORE = [
    ("organisations", None),
    ("reservations", "0003_idempotency_key"),
    ("events", "0007_idempotency_key"),
    ("slots", "0007_idempotency_key"),
    ("webhooks", "0001_initial"),
]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return executor.loader.project_state([t for t in targets if t[1] is not None]).apps


def _latest():
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


@pytest.mark.django_db(transaction=True)
def test_an_existing_database_moves_into_the_default_organisation_and_its_operators_own_it():
    apps = _migrate(BEFORE)
    try:
        now = timezone.now()
        User = apps.get_model("accounts", "User")
        operator = User.objects.create(username="op", email="op@example.com", is_staff=True)
        User.objects.create(username="root", email="root@example.com", is_staff=True, is_superuser=True)
        host = User.objects.create(username="host", email="host@example.com", roles=["HOST"])
        apps.get_model("reservations", "Car").objects.create(
            dealer_id=7, label="Old Kia", created_at=now, updated_at=now
        )
        apps.get_model("events", "Event").objects.create(
            name="Old gala",
            event_date=now + timedelta(days=9),
            location="Pune",
            total_seats=1,
            created_at=now,
            updated_at=now,
        )
        apps.get_model("slots", "Slot").objects.create(
            host=host,
            start=now + timedelta(days=1),
            end=now + timedelta(days=1, hours=1),
            created_at=now,
            updated_at=now,
        )
        apps.get_model("slots", "Availability").objects.create(
            host=host, time_zone="UTC", durations=[30], updated_at=now
        )
        apps.get_model("webhooks", "WebhookEndpoint").objects.create(url="https://hooks.invalid/x", secret="whsec_x")
    finally:
        _migrate(_latest())

    default = Organisation.objects.get()
    assert default.slug == "default"
    for model in (Car, Event, Slot, Availability, WebhookEndpoint):
        assert set(model.objects.values_list("organisation_id", flat=True)) == {default.pk}, model
    # The operator who was not a superuser owns it; the superuser still sees everything without a membership.
    assert list(Membership.objects.values_list("user__username", "organisation", "role")) == [
        ("op", default.pk, "owner")
    ]
    assert operator.pk == Membership.objects.get().user_id


@pytest.mark.django_db(transaction=True)
def test_a_fresh_database_gets_no_organisation():
    _migrate(BEFORE)
    _migrate(_latest())

    assert not Organisation.objects.exists() and not Membership.objects.exists()
