"""Bad input never reaches a 500: every error is the one envelope (docs/contract.md §3.2)."""

from urllib.parse import urlencode

import pytest

from tests.reservations.factories import CarFactory

pytestmark = pytest.mark.django_db


def assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"} and error["code"] == code and error["message"]
    return error


def test_malformed_json_is_a_validation_error(api):
    response = api.post("/api/reservations", data='{"carId": 1,', content_type="application/json")

    assert_envelope(response, 400, "validation_error")


@pytest.mark.parametrize("body", ["[]", '"text"', "null", "42"])
def test_a_body_that_is_not_an_object_is_a_validation_error(api, body):
    response = api.post("/api/reservations", data=body, content_type="application/json")

    assert_envelope(response, 400, "validation_error")


def test_wrong_types_are_reported_per_field(api):
    response = api.post("/api/reservations", {"carId": [1], "holdDurationMinutes": "soon"}, format="json")

    fields = assert_envelope(response, 400, "validation_error")["details"]["fields"]
    assert set(fields) == {"carId", "holdDurationMinutes"}


def test_an_oversized_value_is_a_validation_error(staff_api):
    response = staff_api.post("/api/cars", {"dealerId": 1, "label": "x" * 10_000}, format="json")

    assert "label" in assert_envelope(response, 400, "validation_error")["details"]["fields"]


def test_a_number_too_large_for_the_database_is_a_validation_error(api):
    response = api.post("/api/reservations", {"carId": 2**70}, format="json")

    assert_envelope(response, 400, "validation_error")


def test_unsupported_media_type(api):
    response = api.post("/api/reservations", data="carId=1", content_type="text/plain")

    assert_envelope(response, 415, "unsupported_media_type")


def test_no_credentials_is_401_with_a_challenge(client_for):
    response = client_for(None).get("/api/reservations")

    assert_envelope(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Token")


def test_a_bad_token_is_401(client_for):
    client = client_for(None)
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    assert_envelope(client.get("/api/reservations"), 401, "not_authenticated")


def test_method_not_allowed(api):
    assert_envelope(api.delete("/api/reservations"), 405, "method_not_allowed")


def test_unknown_api_path_is_a_json_404(api):
    assert_envelope(api.get("/api/no/such/thing"), 404, "not_found")


def test_a_path_outside_the_api_keeps_the_html_404(client):
    assert client.get("/no/such/page").status_code == 404


@pytest.mark.django_db(transaction=True)
@pytest.mark.concurrency
def test_a_lock_wait_past_the_timeout_is_503_busy(api, user):
    """A row locked by another connection for longer than the lock timeout: 503 busy, not a hang or a 500."""
    import threading

    from django.db import connections, transaction

    from reservations.models import Car

    car = CarFactory()
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock():
        with transaction.atomic(using="default"):
            Car.objects.select_for_update().get(pk=car.pk)
            locked.set()
            release.wait(10)
        connections.close_all()

    with connections["default"].cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")
    thread = threading.Thread(target=hold_the_lock)
    thread.start()
    locked.wait(5)
    try:
        response = api.post("/api/reservations", {"carId": car.pk}, format="json")
    finally:
        release.set()
        thread.join()

    assert_envelope(response, 503, "busy")
    assert response["Retry-After"] == "1"


@pytest.mark.parametrize(
    "body",
    [
        '{"carId": 1, "requestId": "a\\u0000b"}',
        '{"carId": 1, "requestId": "\\ud800"}',
        '{"carId": 1, "x\\u0000": 1}',
        "[" * 5000 + "]" * 5000,
        '{"carId": ' + "[" * 40 + "]" * 40 + "}",
    ],
    ids=["nul", "lone-surrogate", "nul-in-key", "recursion", "too-deep"],
)
def test_text_postgresql_cannot_store_and_runaway_nesting_are_400(api, body):
    response = api.post("/api/reservations", data=body, content_type="application/json")

    assert_envelope(response, 400, "validation_error")


@pytest.mark.parametrize("key", ["a\x00b", "tab\there", "x" * 256])
def test_idempotency_keys_must_be_printable(api, key):
    response = api.post("/api/reservations", {"carId": CarFactory().pk}, format="json", HTTP_IDEMPOTENCY_KEY=key)

    assert_envelope(response, 400, "validation_error")


@pytest.mark.parametrize("query", ["page=999999999999999999", "page=1000001", "limit=\u00b2", "page=\u0661"])
def test_page_parameters_outside_the_range_are_400(api, query):
    assert_envelope(api.get(f"/api/reservations?{query}"), 400, "validation_error")


def test_a_value_the_database_refuses_is_still_a_400():
    from django.db import DataError

    from core.errors import to_domain_error

    error = to_domain_error(DataError("integer out of range"))

    assert (error.status, error.code) == (400, "validation_error")


@pytest.mark.parametrize(
    "path", ["/api/nope", "/api/reservations/9223372036854775807/confirm", "/api/reservations/", "/api/cars/1/"]
)
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_an_unknown_api_path_is_a_json_404_for_every_method(path, method, client_for, user):
    """Without a CSRF token a POST to a path no view matches used to be Django's HTML CSRF page."""
    client = client_for(user)
    client.handler.enforce_csrf_checks = True

    response = getattr(client, method)(path, {}, format="json")

    assert_envelope(response, 404, "not_found")


def test_a_session_write_without_its_csrf_token_is_403_in_the_envelope(client, staff):
    client.handler.enforce_csrf_checks = True
    client.force_login(staff)

    response = client.post("/api/cars", {"dealerId": 1, "label": "x"})

    assert_envelope(response, 403, "forbidden")


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_a_body_over_the_upload_limit_is_413_in_the_envelope(api, settings, content_type):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = '{"carId": 1, "x": "%s"}' % ("a" * 2000) if content_type == "application/json" else "carId=1&x=" + "a" * 2000

    response = api.post("/api/reservations", data=body, content_type=content_type)

    error = assert_envelope(response, 413, "payload_too_large")
    assert error["details"] == {"maxBytes": 1000}


def test_a_multipart_body_over_the_upload_limit_is_413_in_the_envelope(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = api.post("/api/reservations", data={"carId": "1", "x": "a" * 2000}, format="multipart")

    assert_envelope(response, 413, "payload_too_large")


@pytest.mark.parametrize("format_", ["form", "multipart"])
def test_more_fields_than_allowed_is_400_in_the_envelope(api, settings, format_):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    fields = {f"f{i}": "1" for i in range(20)}

    if format_ == "form":
        response = api.post(
            "/api/reservations", data=urlencode(fields), content_type="application/x-www-form-urlencoded"
        )
    else:
        response = api.post("/api/reservations", data=fields, format="multipart")

    assert_envelope(response, 400, "validation_error")


def test_the_schema_says_every_body_can_be_too_large(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    with_body = [op for ops in schema["paths"].values() for op in ops.values() if "requestBody" in op]
    assert with_body and all("413" in op["responses"] for op in with_body)
