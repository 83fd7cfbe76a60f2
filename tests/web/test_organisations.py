"""Organisations and their members through the API, and what belongs to one (docs/contract.md §2.6): lists
narrowed to the caller's organisations, ``organisationId`` inferred or required, webhooks of one
organisation receiving only its events, the cap's exemption inside one's organisation only."""

import pytest
from django.utils import timezone

from core.errors import LimitReached
from core.organisations.models import Membership
from core.organisations.roles import Role, describe
from events.models import Event
from events.services.rules import NotAdmitted
from events.services.seat_holds import seat_hold
from reservations.services import reservation_hold
from tests.events.factories import make_event
from tests.factories import OrganisationFactory, UserFactory, member
from tests.reservations.factories import CarFactory, ReservationFactory
from web.webhooks.models import WebhookDelivery
from web.webhooks.services import webhook_endpoint_create, webhook_events_fan_out

pytestmark = pytest.mark.django_db


def test_a_superuser_makes_an_organisation_and_its_owner_adds_changes_and_removes_members(client_for, staff):
    root = client_for(staff)
    made = root.post("/api/organisations", {"name": "Kia Pune", "slug": "kia-pune"}, format="json")
    assert made.status_code == 201 and made.json()["role"] is None
    organisation = made.json()["id"]
    owner, clerk = UserFactory(), UserFactory()
    assert (
        root.post(f"/api/organisations/{organisation}/members", {"email": owner.email, "role": "owner"}).status_code
        == 201
    )

    api = client_for(owner)
    assert [(o["id"], o["role"]) for o in api.get("/api/organisations").json()["results"]] == [(organisation, "owner")]
    added = api.post(f"/api/organisations/{organisation}/members", {"email": clerk.email.upper(), "role": "staff"})
    changed = api.post(f"/api/organisations/{organisation}/members", {"email": clerk.email, "role": "manager"})
    assert (added.status_code, changed.status_code, changed.json()["role"]) == (201, 200, "manager")
    assert {m["userId"] for m in api.get(f"/api/organisations/{organisation}/members").json()["results"]} == {
        owner.pk,
        clerk.pk,
    }
    assert api.delete(f"/api/organisations/{organisation}/members/{clerk.pk}").status_code == 204
    assert not Membership.objects.filter(user=clerk).exists()
    assert api.delete(f"/api/organisations/{organisation}/members/{clerk.pk}").status_code == 404


def test_the_last_owner_is_neither_removed_nor_demoted_a_second_owner_lets_the_first_go(client_for, staff):
    organisation, owner, other = OrganisationFactory(), UserFactory(), UserFactory()
    member(owner, organisation, Role.OWNER)
    members = f"/api/organisations/{organisation.pk}/members"
    api, root = client_for(owner), client_for(staff)

    refusals = [
        api.delete(f"{members}/{owner.pk}"),  # leaving
        root.delete(f"{members}/{owner.pk}"),  # a superuser too
        api.post(members, {"email": owner.email, "role": "manager"}, format="json"),
    ]
    assert [(r.status_code, r.json()["error"]["code"]) for r in refusals] == [(409, "last_owner")] * 3
    assert refusals[0].json()["error"]["details"] == {"organisationId": organisation.pk, "userId": owner.pk}
    assert Membership.objects.get(user=owner, organisation=organisation).role == Role.OWNER

    assert api.post(members, {"email": other.email, "role": "owner"}, format="json").status_code == 201
    assert api.post(members, {"email": owner.email, "role": "staff"}, format="json").status_code == 200
    last = client_for(other).delete(f"{members}/{other.pk}")
    assert (last.status_code, last.json()["error"]["code"]) == (409, "last_owner")
    assert client_for(other).delete(f"{members}/{owner.pk}").status_code == 204
    assert list(Membership.objects.filter(organisation=organisation).values_list("user", "role")) == [
        (other.pk, Role.OWNER)
    ]


def test_the_members_of_an_organisation_that_does_not_exist_are_404_to_a_superuser(client_for, staff):
    response = client_for(staff).get("/api/organisations/0/members")

    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_only_a_superuser_makes_an_organisation_and_a_slug_is_taken_once(client_for, staff):
    owner = UserFactory()
    member(owner, OrganisationFactory(slug="taken"), Role.OWNER)

    refused = client_for(owner).post("/api/organisations", {"name": "Mine", "slug": "mine"}, format="json")
    again = client_for(staff).post("/api/organisations", {"name": "Again", "slug": "taken"}, format="json")

    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "slug_taken")


def test_organisation_id_is_inferred_for_a_member_of_one_and_required_of_a_member_of_two(client_for):
    first, second, manager = OrganisationFactory(), OrganisationFactory(), UserFactory()
    member(manager, first, Role.MANAGER)
    car = {"dealerId": 1, "label": "Kia"}

    inferred = client_for(manager).post("/api/cars", car, format="json")
    member(manager, second, Role.MANAGER)
    required = client_for(manager).post("/api/cars", car, format="json")
    chosen = client_for(manager).post("/api/cars", {**car, "organisationId": second.pk}, format="json")

    assert (inferred.status_code, inferred.json()["organisationId"]) == (201, first.pk)
    assert (required.status_code, required.json()["error"]["details"]["fields"]) == (
        400,
        {"organisationId": ["Required: say which organisation this belongs to."]},
    )
    assert (chosen.status_code, chosen.json()["organisationId"]) == (201, second.pk)


def test_an_operators_lists_are_their_organisations_and_narrow_to_one(client_for):
    ours, theirs, elsewhere = OrganisationFactory(), OrganisationFactory(), OrganisationFactory()
    operator = UserFactory()
    member(operator, ours)
    member(operator, elsewhere)
    mine, other, third = (ReservationFactory(car=CarFactory(organisation=o)) for o in (ours, theirs, elsewhere))
    api = client_for(operator)

    listed = {r["id"] for r in api.get("/api/reservations").json()["results"]}
    narrowed = {r["id"] for r in api.get(f"/api/reservations?organisation={ours.pk}").json()["results"]}

    assert listed == {mine.pk, third.pk} and other.pk not in listed
    assert narrowed == {mine.pk}


def test_a_webhook_endpoint_receives_only_its_organisations_events():
    ours, theirs = OrganisationFactory(), OrganisationFactory()
    endpoint = webhook_endpoint_create(organisation_id=ours.pk, url="https://hooks.invalid/ours", now=timezone.now())
    buyer = UserFactory()
    held = [  # a buyer's own hold is the car's organisation's event
        reservation_hold(car_id=CarFactory(organisation=o).pk, buyer=buyer, hold_minutes=5, now=timezone.now())
        for o in (ours, theirs)
    ]

    webhook_events_fan_out(now=timezone.now())

    assert list(WebhookDelivery.objects.values_list("endpoint", "event_type", "subject_id")) == [
        (endpoint.pk, "reservation.created", str(held[0].pk))
    ]


def test_an_operator_is_exempt_from_the_cap_only_inside_their_organisation(settings):
    settings.RESERVATION_MAX_ACTIVE_HOLDS_PER_BUYER = 1
    ours, theirs, operator = OrganisationFactory(), OrganisationFactory(), UserFactory()
    member(operator, ours)

    for _ in range(2):  # inside: exempt
        reservation_hold(car_id=CarFactory(organisation=ours).pk, buyer=operator, hold_minutes=5, now=timezone.now())
    with pytest.raises(LimitReached):  # outside: a buyer like any other, and over the limit already
        reservation_hold(car_id=CarFactory(organisation=theirs).pk, buyer=operator, hold_minutes=5, now=timezone.now())


def test_an_operator_holds_seats_past_the_cap_and_the_queue_only_inside_their_organisation(settings):
    settings.EVENT_MAX_HELD_SEATS_PER_USER = 2
    ours, theirs, operator = OrganisationFactory(), OrganisationFactory(), UserFactory()
    member(operator, ours)
    inside, outside = (make_event(total_seats=10, organisation_id=o.pk) for o in (ours, theirs))
    Event.objects.filter(pk__in=[inside.pk, outside.pk]).update(queue_enabled=True)

    assert seat_hold(event_id=inside.pk, user=operator, quantity=3, now=timezone.now()).seat_count == 3  # exempt
    with pytest.raises(NotAdmitted):  # outside: a buyer like any other, behind the queue
        seat_hold(event_id=outside.pk, user=operator, quantity=1, now=timezone.now())
    Event.objects.filter(pk=outside.pk).update(queue_enabled=False)
    with pytest.raises(LimitReached):  # and held to the cap
        seat_hold(event_id=outside.pk, user=operator, quantity=3, now=timezone.now())


def test_the_ladder_says_what_each_role_may_do_in_words():
    assert describe(Role.STAFF).startswith("holds, bookings")
    assert "members and webhook endpoints" in describe(Role.OWNER) and "members" not in describe(Role.MANAGER)
