"""The slot listing guests browse (issue "Fast when sales open", section 3): a page and its count as of
``asOf``. Round trips are pinned here; speed is measured by bench/, never in a test."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from slots.api import views
from tests.conftest import Clock
from tests.slots.factories import SlotBookingFactory, SlotFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock(monkeypatch):
    return Clock.patched_into(views, monkeypatch)


def test_the_page_says_as_of_when_and_keeps_its_shape(api):
    SlotFactory()
    before = timezone.now()

    body = api.get("/api/slots").json()

    assert list(body) == ["results", "count", "page", "limit", "asOf"]
    assert before <= parse_datetime(body["asOf"]) <= timezone.now()
    assert (body["count"], body["page"], body["limit"]) == (1, 1, 20)


def test_a_page_is_kept_for_less_than_a_second_then_read_again(api, clock, recent_reads):
    first_slot = SlotFactory(capacity=3)
    first = api.get("/api/slots").json()
    SlotFactory()
    SlotBookingFactory(slot=first_slot, seats=2)

    clock.advance(0.999)
    kept = api.get("/api/slots").json()
    clock.advance(0.001)
    fresh = api.get("/api/slots").json()

    assert kept == first and kept["count"] == 1 and kept["results"][0]["remainingCapacity"] == 3
    assert fresh["count"] == 2 and fresh["results"][0]["remainingCapacity"] == 1
    assert parse_datetime(fresh["asOf"]) == clock.moment


def test_a_kept_page_counts_an_overdue_hold_as_free_judged_at_as_of(api, clock, recent_reads):
    slot = SlotFactory(capacity=2)
    SlotBookingFactory(
        slot=slot,
        seats=2,
        status="PENDING",
        created_at=clock.moment - timedelta(minutes=10),
        expires_at=clock.moment + timedelta(milliseconds=500),
    )

    at_as_of = api.get("/api/slots", {"available": "true"}).json()
    clock.advance(0.6)
    kept = api.get("/api/slots", {"available": "true"}).json()
    clock.advance(0.4)
    fresh = api.get("/api/slots", {"available": "true"}).json()

    assert at_as_of == kept and kept["count"] == 0
    assert fresh["count"] == 1 and fresh["results"][0]["remainingCapacity"] == 2


def test_each_query_string_is_its_own_page(api, clock, recent_reads):
    slots = [SlotFactory(specialization=name) for name in ("cardiology", "dentist", "dentist")]

    page_one = api.get("/api/slots", {"limit": 1}).json()
    page_two = api.get("/api/slots", {"limit": 1, "page": 2}).json()
    dentists = api.get("/api/slots", {"specialization": "dentist"}).json()

    assert [s["id"] for s in page_one["results"]] == [slots[0].pk]
    assert [s["id"] for s in page_two["results"]] == [slots[1].pk]
    assert [s["id"] for s in dentists["results"]] == [slots[1].pk, slots[2].pk] and dentists["count"] == 2


def test_a_bad_filter_is_400_every_time(api, recent_reads):
    for _ in range(2):
        assert api.get("/api/slots", {"available": "yes"}).status_code == 400


def test_the_listing_is_two_statements_and_none_while_kept(signed_in, django_assert_num_queries, recent_reads):
    for _ in range(3):
        SlotBookingFactory(slot=SlotFactory(capacity=2))

    with django_assert_num_queries(2):  # the count and the page (host names joined, remaining capacity inline)
        assert signed_in.get("/api/slots").json()["count"] == 3
    with django_assert_num_queries(0):
        assert signed_in.get("/api/slots").status_code == 200


def test_the_schema_documents_as_of_on_the_listing(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    ref = schema["paths"]["/api/slots"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert "asOf" in page["properties"] and "asOf" in page["required"]
    assert "asOf" not in schema["components"]["schemas"]["PaginatedSlotOutList"]["properties"]  # the host's own
