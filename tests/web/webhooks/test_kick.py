"""A request that wrote wakes a delivery run, and never waits for it, nor fails with the broker."""

import threading
import time

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

from tests.factories import house
from tests.reservations.factories import CarFactory
from tests.web.webhooks.test_jobs import wait_for
from web.webhooks import kick, services
from web.webhooks.tasks import deliver_audit_events


@pytest.fixture
def publishes(monkeypatch):
    """What the kick thread publishes, with ``behave()`` run first in that thread (a slow or dead broker)."""
    published = []

    class Broker:
        behave = staticmethod(lambda: None)

    def apply_async(*args, **kwargs):
        Broker.behave()
        published.append(kwargs)

    monkeypatch.setattr(deliver_audit_events, "apply_async", apply_async)
    kick._endpoints = None
    yield published, Broker
    kick._endpoints = None


@pytest.mark.django_db(transaction=True)
def test_a_write_kicks_a_run_and_the_request_does_not_wait_for_the_broker(api, publishes, receiver):
    published, broker = publishes
    services.webhook_endpoint_create(
        organisation_id=house().pk, url=receiver.url, now=timezone.now()
    )  # a kick of its own
    wait_for(lambda: published, seconds=5)
    slow = threading.Event()
    broker.behave = lambda: slow.wait(5)  # a broker that takes 5 s to answer
    car = CarFactory()
    time.sleep(2 * kick.KICK_INTERVAL_SECONDS)

    started = time.monotonic()
    response = api.post("/api/reservations", {"carId": car.pk})

    assert response.status_code == 201 and time.monotonic() - started < 1
    slow.set()
    wait_for(lambda: len(published) == 2, seconds=5)
    assert published[-1] == {"retry": False}


@pytest.mark.django_db(transaction=True)
def test_a_broker_that_is_down_never_reaches_the_client_and_the_next_kick_still_works(api, publishes, receiver):
    published, broker = publishes
    services.webhook_endpoint_create(organisation_id=house().pk, url=receiver.url, now=timezone.now())
    wait_for(lambda: published, seconds=5)
    published.clear()

    def down():
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    broker.behave = down
    assert api.post("/api/reservations", {"carId": CarFactory().pk}).status_code == 201
    time.sleep(0.5)
    broker.behave = lambda: None

    assert api.post("/api/reservations", {"carId": CarFactory().pk}).status_code == 201
    wait_for(lambda: published, seconds=5)


@pytest.mark.django_db(transaction=True)
def test_without_an_active_endpoint_nothing_is_published(api, publishes):
    published, _ = publishes

    assert api.post("/api/reservations", {"carId": CarFactory().pk}).status_code == 201
    assert api.get("/api/reservations").status_code == 200

    time.sleep(0.5)
    assert published == []
