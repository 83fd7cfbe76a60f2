"""The schema's refusals, derived from the views (booking_site.schema, docs/decisions/0011-schema-refusals.md)."""

import re

import pytest
from drf_spectacular.generators import SchemaGenerator

from booking_site.idempotency import VALID_KEY


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(public=True)


def operations(schema):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def codes(operation, status: int) -> list[str]:
    """The codes the schema lists for ``status``: the enum of ``error.code``."""
    [_, narrowed] = operation["responses"][str(status)]["content"]["application/json"]["schema"]["allOf"]
    return narrowed["properties"]["error"]["properties"]["code"]["enum"]


def test_every_operation_but_the_health_check_can_be_throttled_and_every_one_can_be_unavailable(schema):
    for name, operation in operations(schema):
        assert "unavailable" in codes(operation, 503), name
        if name not in ("GET /api/health", "GET /api/health/ready"):
            assert codes(operation, 429) == ["throttled"], name
            if name != "GET /api/calendar/{secret}.ics":  # a private feed: its secret is its only credential
                assert codes(operation, 401) == ["not_authenticated"], name
    for path in ("/api/health", "/api/health/ready"):
        assert "429" not in schema["paths"][path]["get"]["responses"]


def test_a_keyed_operation_declares_the_key_and_its_refusals(schema):
    keyed = [
        (name, op)
        for name, op in operations(schema)
        if any(p["name"] == "Idempotency-Key" for p in op.get("parameters", []))
    ]

    writes = [name for name, _ in operations(schema) if not name.startswith("GET ")]
    assert sorted(name for name, _ in keyed) == sorted(set(writes) - {"POST /api/users"})  # registration: anonymous
    for name, operation in keyed:
        assert "request_in_progress" in codes(operation, 409), name
        assert codes(operation, 422) == ["idempotency_key_reused"], name
        assert "busy" in codes(operation, 503), name
        [key] = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
        assert key["schema"]["minLength"] == 1 and key["schema"]["maxLength"] == 255, name


@pytest.mark.parametrize("key", ["k", "order 17/2", "é" * 255, "a b"])
def test_the_key_pattern_admits_what_the_server_takes(schema, key):
    pattern = schema["paths"]["/api/reservations"]["post"]["parameters"][0]["schema"]["pattern"]

    assert re.fullmatch(pattern, key) and VALID_KEY.fullmatch(key)


@pytest.mark.parametrize("key", ["", " ", " k", "k ", "k\x00", "k\x1f", "k\x7f"])
def test_the_key_pattern_refuses_what_the_server_cannot_get_or_refuses(schema, key):
    """A header's surrounding spaces never reach the server (HTTP trims them): " " arrives empty, a 400."""
    pattern = schema["paths"]["/api/reservations"]["post"]["parameters"][0]["schema"]["pattern"]

    assert not re.fullmatch(pattern, key)


def test_ids_in_paths_and_filters_are_bounded_whole_numbers(schema):
    [car_id] = schema["paths"]["/api/cars/{car_id}"]["get"]["parameters"]
    filters = {p["name"]: p["schema"] for p in schema["paths"]["/api/reservations"]["get"]["parameters"]}

    assert car_id["schema"] == {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}  # IdConverter: 1-18 digits
    assert filters["carId"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}


def test_a_view_lists_its_own_domain_errors_next_to_the_derived_ones(schema):
    hold = schema["paths"]["/api/reservations"]["post"]
    confirm = schema["paths"]["/api/events/{event_id}/seats/confirm"]["post"]
    host_slots = schema["paths"]["/api/slots/host"]["get"]

    assert codes(hold, 409) == ["car_unavailable", "limit_reached", "request_in_progress"]
    assert codes(confirm, 400) == ["event_mismatch", "validation_error"] and codes(confirm, 410) == ["hold_expired"]
    assert codes(host_slots, 403) == ["forbidden"]
    assert hold["responses"]["409"]["description"] == "`car_unavailable`, `limit_reached`, `request_in_progress`"
