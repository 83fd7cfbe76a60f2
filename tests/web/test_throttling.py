"""Throttling (docs/contract.md §3.6, docs/decisions/0010-abuse-limits.md): on by default, 429 `throttled`
with Retry-After in the envelope, a tighter scope on holds and registration, counters in the shared
cache. The rest of the suite runs with it off (tests/conftest.py); here it is on."""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.filebased import FileBasedCache

from tests.reservations.factories import CarFactory, ReservationFactory

pytestmark = pytest.mark.django_db

RATES = {"anon": None, "user": None, "holds": None, "registration": None}


@pytest.fixture
def throttled(settings):
    """Throttling on, every scope off until the test gives it a rate, counters empty."""
    settings.THROTTLE_ENABLED = True
    settings.THROTTLE_RATES = dict(RATES)
    cache.clear()
    yield settings.THROTTLE_RATES
    cache.clear()


def assert_throttled(response, *, period: int = 60) -> None:
    """429 ``throttled`` in the envelope, with the whole seconds until the rate's ``period`` lets one more through."""
    assert response.status_code == 429, response.content
    error = response.json()["error"]
    assert (error["code"], error["details"]) == ("throttled", {}) and error["message"]
    assert 1 <= int(response["Retry-After"]) <= period


def register(client, n: int):
    return client.post("/api/users", {"email": f"u{n}@example.com", "name": f"U{n}"}, format="json")


def hold(api):
    return api.post("/api/reservations", {"carId": CarFactory().pk}, format="json")


def test_throttling_is_on_by_default_with_a_rate_for_every_scope():
    """What a deployment gets with no THROTTLE_* variable set: the settings read in a fresh process."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("THROTTLE_")}
    read = "from config import settings as s; print(json.dumps([s.THROTTLE_ENABLED, s.THROTTLE_RATES]))"
    out = subprocess.run(
        [sys.executable, "-c", f"import json; {read}"], env=env, cwd=settings.BASE_DIR, capture_output=True, check=True
    )
    enabled, rates = json.loads(out.stdout)

    assert enabled is True
    assert rates == {
        "anon": "60/minute",
        "user": "600/minute",
        "holds": "30/minute",
        "registration": "20/hour",
    }


def test_a_user_over_the_rate_gets_429_with_retry_after(throttled, api):
    throttled["user"] = "2/minute"

    statuses = [api.get("/api/cars").status_code for _ in range(2)]

    assert statuses == [200, 200]
    assert_throttled(api.get("/api/cars"))


def test_anonymous_clients_are_counted_by_address(throttled, client_for):
    throttled["anon"] = "2/minute"
    first, second = client_for(None), client_for(None)

    assert [first.get("/api/").status_code, second.get("/api/").status_code] == [200, 200]
    assert_throttled(first.get("/api/"))  # the same address: one counter for both
    assert client_for(None).get("/api/", REMOTE_ADDR="192.0.2.7").status_code == 200


def test_a_client_cannot_pick_its_counter_with_x_forwarded_for(throttled, client_for):
    throttled["anon"] = "1/minute"
    client = client_for(None)

    assert client.get("/api/", HTTP_X_FORWARDED_FOR="198.51.100.1").status_code == 200
    assert_throttled(client.get("/api/", HTTP_X_FORWARDED_FOR="198.51.100.2"))


def test_behind_a_proxy_the_address_it_saw_is_the_clients(throttled, settings, client_for):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    throttled["anon"] = "1/minute"
    client = client_for(None)

    assert client.get("/api/", HTTP_X_FORWARDED_FOR="spoofed, 198.51.100.1").status_code == 200
    assert client.get("/api/", HTTP_X_FORWARDED_FOR="spoofed, 198.51.100.2").status_code == 200
    assert_throttled(client.get("/api/", HTTP_X_FORWARDED_FOR="other, 198.51.100.1"))


def test_registration_has_its_own_tighter_rate(throttled, client_for):
    throttled["anon"], throttled["registration"] = "100/minute", "2/hour"
    client = client_for(None)

    assert [register(client, n).status_code for n in range(2)] == [201, 201]
    assert_throttled(register(client, 3), period=3600)
    assert client.get("/api/").status_code == 200  # only the registrations are held back


def test_holds_have_their_own_tighter_rate_and_reads_do_not_count(throttled, api):
    throttled["user"], throttled["holds"] = "100/minute", "2/minute"

    assert [hold(api).status_code for _ in range(2)] == [201, 201]
    assert_throttled(hold(api))
    assert api.get("/api/reservations").status_code == 200
    assert_throttled(api.post("/api/events/1/seats/reserve", {"quantity": 1}, format="json"))  # one scope
    assert_throttled(api.post("/api/bookings", {"slotId": 1}, format="json"))


def test_operators_are_exempt_from_the_hold_scope_not_from_the_user_rate(throttled, staff_api):
    throttled["user"], throttled["holds"] = "5/minute", "1/minute"

    assert [hold(staff_api).status_code for _ in range(5)] == [201] * 5
    assert_throttled(hold(staff_api))


def test_a_transition_is_not_a_hold(throttled, api, user):
    throttled["holds"] = "1/minute"
    reservations = [ReservationFactory(buyer=user) for _ in range(2)]

    for reservation in reservations:
        assert api.post(f"/api/reservations/{reservation.pk}/cancel", {}).status_code == 200


@pytest.mark.parametrize("path", ["/api/health", "/api/health/ready"])
def test_health_is_never_throttled(throttled, client_for, path):
    throttled["anon"] = "1/minute"
    client = client_for(None)

    assert [client.get(path).status_code for _ in range(3)] == [200] * 3


def test_throttle_enabled_false_turns_every_scope_off(throttled, settings, api):
    throttled["user"] = throttled["holds"] = "1/minute"
    settings.THROTTLE_ENABLED = False

    assert [hold(api).status_code for _ in range(3)] == [201] * 3


def test_the_counters_live_in_the_shared_cache(throttled, settings, api, user, tmp_path):
    """The counters are in the configured cache, not in the process: what another process wrote there
    (a second web worker on the same Redis; here a file cache, which processes share too) counts."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": tmp_path}
    }
    throttled["user"] = "3/minute"
    other_process = FileBasedCache(str(tmp_path), {})

    assert api.get("/api/cars").status_code == 200
    history = other_process.get(f"throttle_user_{user.pk}")
    assert len(history) == 1  # the other process sees this one's request

    other_process.set(f"throttle_user_{user.pk}", [history[0]] * 3, 60)  # and this one sees its requests
    assert_throttled(api.get("/api/cars"))


def test_the_schema_says_every_throttled_operation_can_answer_429_and_every_hold_409(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    operations = {(path, method): op for path, ops in schema["paths"].items() for method, op in ops.items()}
    health = {"/api/health", "/api/health/ready"}
    assert all("429" in op["responses"] for (path, _), op in operations.items() if path not in health)
    assert all("429" not in operations[(path, "get")]["responses"] for path in health)  # never throttled
    for hold_path in ("/api/reservations", "/api/events/{event_id}/seats/reserve", "/api/bookings"):
        assert "409" in operations[(hold_path, "post")]["responses"]  # limit_reached among the 409s
    assert operations[("/api/reservations", "post")]["responses"]["429"]["headers"]["Retry-After"]
