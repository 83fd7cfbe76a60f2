"""The schema's refusals, derived from the views (web.schema, docs/decisions/0011-schema-refusals.md)."""

import inspect
import re
from types import SimpleNamespace

import pytest
from drf_spectacular.generators import SchemaGenerator

from tests.web import schemathesis_hooks
from web.api import ModelSerializer, StrictSerializer
from web.idempotency import VALID_KEY
from web.schema import ERROR_CODES


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(public=True)


def operations(schema):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def codes(operation, status: int) -> list[str]:
    """The codes the schema lists for ``status``: its ``x-error-codes``, beside the one Error model."""
    response = operation["responses"][str(status)]
    assert response["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return response["x-error-codes"]


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


def test_every_request_body_is_json_only(schema):
    """A generated client sends what the schema offers: forms and multipart made it send each field twice.
    The server still takes them, for the browsable API's forms (PARSER_WHITELIST, ADR 0018)."""
    bodies = {name: op["requestBody"]["content"] for name, op in operations(schema) if "requestBody" in op}

    assert len(bodies) > 20
    assert {name: list(content) for name, content in bodies.items() if list(content) != ["application/json"]} == {}


def test_every_error_is_the_one_error_model_with_its_codes_beside_it(schema):
    """Each error status of each operation: the Error component (code, message and details, all given),
    its codes in x-error-codes and the description. No narrowed copy for a generator to turn into models."""
    body = schema["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["code", "details", "message"]
    assert schema["components"]["schemas"]["Error"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorBody"}
    for name, operation in operations(schema):
        errors = {status: r for status, r in operation["responses"].items() if int(status) >= 400}
        assert {"406", "503"} <= set(errors), name
        for status, response in errors.items():
            listed = codes(operation, int(status))
            assert listed and listed == sorted(set(listed)), (name, status)
            assert response["description"] == ", ".join(f"`{code}`" for code in listed), (name, status)


def test_the_fuzzer_reads_the_codes_where_the_schema_writes_them():
    assert schemathesis_hooks.ERROR_CODES == ERROR_CODES


def test_the_fuzzers_check_refuses_a_code_the_operation_does_not_list(schema):
    raw = schema["paths"]["/api/reservations"]["post"]
    case = SimpleNamespace(
        operation=SimpleNamespace(label="POST /api/reservations", definition=SimpleNamespace(raw=raw))
    )

    def answer(status: int, code: str) -> SimpleNamespace:
        return SimpleNamespace(status_code=status, json=lambda: {"error": {"code": code}})

    schemathesis_hooks.error_code_listed(None, answer(409, "car_unavailable"), case)
    schemathesis_hooks.error_code_listed(None, answer(201, "ignored"), case)  # not an error
    with pytest.raises(AssertionError, match="409 `slot_full`, which its schema does not list"):
        schemathesis_hooks.error_code_listed(None, answer(409, "slot_full"), case)


def test_no_model_is_described_by_a_base_class_written_for_developers(schema):
    """drf-spectacular falls back on a base class's docstring: the field cache's notes were the description
    of every output model, and so of every generated client's classes."""
    bases = {inspect.cleandoc(base.__doc__) for base in (ModelSerializer, StrictSerializer)}

    described = {name: c.get("description") for name, c in schema["components"]["schemas"].items()}
    assert {name for name, text in described.items() if text in bases} == set()
