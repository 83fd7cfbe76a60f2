"""Schema and docs, health, metrics, request ids, the API root (docs/contract.md §3.1, §8)."""

import re

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command

from config.celery import app as celery_app

pytestmark = pytest.mark.django_db


def test_the_openapi_schema_is_valid_and_camel_case(client, capsys):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")

    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    reservation = schema["components"]["schemas"]["ReservationOut"]["properties"]
    assert {"carId", "buyerId", "expiresAt", "requestId", "createdAt", "updatedAt"} <= set(reservation)
    assert "/api/reservations/{reservation_id}/confirm" in schema["paths"]


def test_swagger_ui_renders_from_the_projects_own_files(client):
    """/api/docs/ must work on a machine without internet: no CDN, every asset a static file of ours."""
    response = client.get("/api/docs/")

    page = response.content.decode()
    assert response.status_code == 200 and "swagger" in page.lower()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(asset.startswith(settings.STATIC_URL) or asset.startswith("/static/") for asset in assets)
    for asset in assets:
        assert finders.find(asset.split("/static/", 1)[1]), asset


def test_the_api_root_lists_the_collections(client):
    body = client.get("/api/").json()

    assert body["reservation-list"].endswith("/api/reservations") and body["docs"].endswith("/api/docs/")


def test_health_reports_database_and_broker(client):
    response = client.get("/api/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


@pytest.fixture(params=["redis://127.0.0.1:1/0", "amqp://guest:guest@127.0.0.1:1//"], ids=["redis", "rabbitmq"])
def broker_down(request, monkeypatch):
    """A broker that does not answer, whatever the suite runs on: the URL's scheme picks the transport, as
    settings.py does for a CELERY_BROKER_URL; the embedded defaults' filesystem transport must not stay."""
    monkeypatch.setenv("CELERY_BROKER_URL", request.param)  # Celery reads it before its config
    monkeypatch.setitem(celery_app.conf, "broker_url", request.param)
    monkeypatch.setitem(celery_app.conf, "broker_transport", None)
    monkeypatch.setitem(celery_app.conf, "broker_transport_options", {})


def test_health_is_503_when_the_broker_is_down(client, broker_down):
    response = client.get("/api/health")

    assert response.status_code == 503 and response["Retry-After"]
    error = response.json()["error"]
    assert error["code"] == "unavailable" and error["details"]["checks"]["broker"].startswith("down")


def test_ready_asks_the_database_only_so_a_broker_outage_keeps_the_web_processes_in_the_pool(client, broker_down):
    response = client.get("/api/health/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}


def test_request_ids_come_back_and_are_made_up_when_missing(api):
    assert api.get("/api/users/me", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    assert len(api.get("/api/users/me")["X-Request-ID"]) == 32
    assert api.get("/api/users/me", HTTP_X_REQUEST_ID="bad id with spaces")["X-Request-ID"] != "bad id with spaces"


def test_metrics_export_the_booking_counters(api, client):
    api.post("/api/reservations", {"carId": 987654}, format="json")

    body = client.get("/metrics").content.decode()

    assert (
        'django_http_responses_total_by_status_view_method_total{method="POST",status="404",view="reservation-list"}'
        in body
    )
    assert 'django_http_requests_latency_seconds_by_view_method_count{method="POST",view="reservation-list"}' in body
    assert "booking_holds_created_total" in body and "booking_constraint_backstop_total" in body


def test_the_browsable_api_works_for_a_logged_in_operator(client, staff):
    client.force_login(staff)

    response = client.get("/api/reservations", HTTP_ACCEPT="text/html")

    assert response.status_code == 200 and b"Reservation List" in response.content


def test_the_schema_says_request_bodies_take_no_unknown_fields(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    body = schema["components"]["schemas"]["ReservationCreateInRequest"]
    assert body["additionalProperties"] is False
    assert {"carId", "buyerId", "holdDurationMinutes", "requestId"} == set(body["properties"])


def test_a_browser_on_an_allowed_origin_may_call_the_api_and_read_its_headers(api, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://shop.example.com"]

    preflight = api.options(
        "/api/reservations",
        HTTP_ORIGIN="https://shop.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type, idempotency-key",
    )
    response = api.get("/api/users/me", HTTP_ORIGIN="https://shop.example.com")

    assert preflight["Access-Control-Allow-Origin"] == "https://shop.example.com"
    assert "idempotency-key" in preflight["Access-Control-Allow-Headers"]
    exposed = {h.strip() for h in response["Access-Control-Expose-Headers"].split(",")}
    assert exposed == {"Idempotency-Key", "X-Request-ID", "Idempotent-Replayed", "Retry-After"}


def test_no_origin_is_allowed_by_default(api):
    response = api.get("/api/users/me", HTTP_ORIGIN="https://elsewhere.example.com")

    assert "Access-Control-Allow-Origin" not in response
