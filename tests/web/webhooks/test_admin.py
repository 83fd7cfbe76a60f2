"""Webhooks in the back office, through the Django test client."""

import pytest

from tests.factories import house
from tests.web.webhooks.test_delivery import events_of
from web.webhooks.models import WebhookDelivery, WebhookEndpoint
from web.webhooks.services import webhooks_deliver

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, staff):
    client.force_login(staff)
    return client


def test_an_operator_adds_an_endpoint_and_is_shown_its_secret_once(operator, receiver):
    response = operator.post(
        "/admin/webhooks/webhookendpoint/add/",
        {
            "organisation": house().pk,
            "url": receiver.url,
            "description": "clinic app",
            "event_types": ["reservation.created"],
        },
        follow=True,
    )

    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.event_types == ["reservation.created"] and endpoint.secret.startswith("whsec_")
    assert endpoint.secret in response.content.decode()
    assert (
        endpoint.secret not in operator.get(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/").content.decode()
    )


def test_a_private_url_is_a_form_error(operator, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = False

    response = operator.post(
        "/admin/webhooks/webhookendpoint/add/", {"organisation": house().pk, "url": "http://10.0.0.1/hooks"}
    )

    assert response.status_code == 200 and "private, loopback or link-local" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_the_test_event_and_rotation_actions(operator, endpoint, receiver):
    changelist = "/admin/webhooks/webhookendpoint/"
    page = operator.post(changelist, {"action": "send_test_event", "_selected_action": [endpoint.pk]}, follow=True)
    assert "HTTP 200" in page.content.decode() and len(receiver.received) == 1

    page = operator.post(changelist, {"action": "rotate_secret", "_selected_action": [endpoint.pk]}, follow=True)
    endpoint.refresh_from_db()
    assert endpoint.secret in page.content.decode() and endpoint.previous_secret


def test_deliveries_are_listed_with_their_attempts_and_retried_now(operator, endpoint, receiver, settings):
    settings.WEBHOOK_RETRY_DELAYS = [3600]
    receiver.answer = lambda received: (500, {})
    events_of(["a"], 1)
    webhooks_deliver()
    delivery = WebhookDelivery.objects.get()

    assert operator.get("/admin/webhooks/webhookdelivery/?status__exact=PENDING").status_code == 200
    assert "HTTP 500" in operator.get(f"/admin/webhooks/webhookdelivery/{delivery.pk}/change/").content.decode()
    receiver.answer = lambda received: (200, {})
    operator.post(
        "/admin/webhooks/webhookdelivery/", {"action": "retry_now", "_selected_action": [delivery.pk]}, follow=True
    )
    webhooks_deliver()

    delivery.refresh_from_db()
    assert delivery.status == "DELIVERED" and delivery.attempts == 2
