"""/api/webhooks: operators register endpoints, rotate secrets, read deliveries, send a test (docs/contract.md §3.7)."""

import base64

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from reservations.services import reservation_hold
from tests.reservations.factories import CarFactory
from web.webhooks import catalogue
from web.webhooks.models import WebhookDelivery, WebhookEndpoint
from web.webhooks.services import webhooks_deliver

pytestmark = pytest.mark.django_db


def test_an_operator_registers_an_endpoint_and_sees_its_secret_once(staff_api, receiver):
    response = staff_api.post(
        "/api/webhooks", {"url": receiver.url, "description": "shop", "eventTypes": ["reservation.created"]}
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["secret"].startswith("whsec_") and len(body["secret"]) > 40
    assert {k: body[k] for k in ("url", "description", "eventTypes", "active")} == {
        "url": receiver.url,
        "description": "shop",
        "eventTypes": ["reservation.created"],
        "active": True,
    }
    assert set(body) >= {"id", "createdAt"}
    assert "secret" not in staff_api.get(f"/api/webhooks/{body['id']}").json()
    assert "secret" not in staff_api.get("/api/webhooks").json()["results"][0]


def test_a_given_secret_is_kept_and_a_malformed_one_refused(staff_api, receiver):
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert staff_api.post("/api/webhooks", {"url": receiver.url, "secret": secret}).json()["secret"] == secret

    response = staff_api.post("/api/webhooks", {"url": receiver.url, "secret": "hunter2"})

    assert response.status_code == 400
    assert response.json()["error"]["details"]["fields"]["secret"] == ['Must start with "whsec_".']


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hooks",
        "http://localhost:8000/",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ],
)
def test_a_private_url_is_refused_when_private_urls_are_not_allowed(staff_api, settings, url):
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = False

    response = staff_api.post("/api/webhooks", {"url": url})

    assert response.status_code == 400
    assert "private, loopback or link-local" in response.json()["error"]["details"]["fields"]["url"][0]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "javascript:alert(1)", "http://", "https://user:pw@example.com/"]
)
def test_a_url_that_is_not_http_is_refused(staff_api, url):
    response = staff_api.post("/api/webhooks", {"url": url})

    assert response.status_code == 400 and response.json()["error"]["code"] == "validation_error"


def test_an_unknown_event_type_is_refused(staff_api, receiver):
    response = staff_api.post("/api/webhooks", {"url": receiver.url, "eventTypes": ["reservation.exploded"]})

    assert response.status_code == 400 and "eventTypes" in response.json()["error"]["details"]["fields"]


def test_only_operators_see_or_manage_webhooks(api, client_for, receiver):
    assert api.get("/api/webhooks").status_code == 403
    assert api.post("/api/webhooks", {"url": receiver.url}).status_code == 403
    assert client_for(None).get("/api/webhooks").status_code == 401


def test_an_endpoint_is_changed_and_deleted(staff_api, endpoint):
    response = staff_api.patch(f"/api/webhooks/{endpoint.pk}", {"active": False, "eventTypes": ["car.updated"]})

    assert response.status_code == 200
    assert (response.json()["active"], response.json()["eventTypes"]) == (False, ["car.updated"])
    assert staff_api.patch(f"/api/webhooks/{endpoint.pk}", {"secret": "x"}).status_code == 400
    assert staff_api.delete(f"/api/webhooks/{endpoint.pk}").status_code == 204
    assert staff_api.get(f"/api/webhooks/{endpoint.pk}").json()["error"]["code"] == "not_found"


def test_rotating_the_secret_answers_the_new_one(staff_api, endpoint):
    response = staff_api.post(f"/api/webhooks/{endpoint.pk}/rotate-secret", {})

    assert response.status_code == 200
    endpoint.refresh_from_db()
    assert response.json() == {"secret": endpoint.secret} and endpoint.previous_secret


def test_the_test_event_is_sent_now_and_its_result_answered(staff_api, endpoint, receiver):
    response = staff_api.post(f"/api/webhooks/{endpoint.pk}/test", {})

    assert response.status_code == 200, response.json()
    result = response.json()
    assert (result["ok"], result["statusCode"], result["error"], result["responseSnippet"]) == (True, 200, "", "ok")
    [received] = receiver.received
    assert Webhook(endpoint.secret).verify(received.body, received.headers)["type"] == "webhook.test"
    assert WebhookDelivery.objects.get().status == "DELIVERED"


def test_a_failed_test_event_says_why(staff_api, endpoint, receiver):
    receiver.answer = lambda received: (404, {})

    result = staff_api.post(f"/api/webhooks/{endpoint.pk}/test", {}).json()

    assert (result["ok"], result["statusCode"], result["error"]) == (False, 404, "HTTP 404")
    assert WebhookDelivery.objects.get().status == "FAILED"  # a test is sent once


def test_the_deliveries_of_an_endpoint_are_a_page(staff_api, endpoint, user):
    reservation_hold(car_id=CarFactory().pk, buyer=user, hold_minutes=5, now=timezone.now())
    webhooks_deliver()

    page = staff_api.get(f"/api/webhooks/{endpoint.pk}/deliveries?status=DELIVERED").json()

    assert page["count"] == 1
    [delivery] = page["results"]
    assert delivery["eventType"] == "reservation.created" and delivery["status"] == "DELIVERED"
    assert delivery["attempts"] == 1 and delivery["lastStatusCode"] == 200 and delivery["deliveredAt"]
    assert delivery["webhookId"] == f"msg_{delivery['id']}"
    assert staff_api.get(f"/api/webhooks/{endpoint.pk}/deliveries?status=NOPE").status_code == 400
    assert staff_api.get("/api/webhooks/999999/deliveries").status_code == 404


def test_the_schema_lists_every_event_type(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    assert "/api/webhooks/{endpoint_id}/rotate-secret" in schema["paths"]
    enums = [s.get("enum") for s in schema["components"]["schemas"].values()]
    assert sorted(catalogue.EVENT_TYPES) in [sorted(e) for e in enums if e]


def test_the_metrics_say_how_old_the_oldest_undelivered_event_is(client, endpoint, user):
    reservation_hold(car_id=CarFactory().pk, buyer=user, hold_minutes=5, now=timezone.now())

    body = client.get("/metrics").content.decode()

    assert 'booking_webhook_deliveries{status="PENDING"} 0.0' in body
    line = next(line for line in body.splitlines() if line.startswith("booking_webhook_oldest_undelivered_seconds"))
    assert float(line.split()[1]) > 0


def test_an_unpadded_secret_is_accepted_as_the_library_reads_it(staff_api, receiver):
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode().rstrip("=")  # 43 characters, no padding

    assert staff_api.post("/api/webhooks", {"url": receiver.url, "secret": secret}).status_code == 201
