"""The admin's BOLA matrix (issue 22, docs/contract.md §2.6): two organisations x every role x every admin
list, change page, action and custom view. Asked for the other organisation's row, a member gets 404 (a
page) or does not find it (a list, a search, an export, an action's selection), and nothing changes in the
database; asked for their own, what their role allows works and the rest is 403."""

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.contrib.messages.storage.fallback import FallbackStorage
from django.db.models import Model
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from core.admin import OrganisationScoped, PlatformAdmin
from core.models import InvariantReport
from core.organisations.models import Membership, Organisation
from core.organisations.roles import LADDER, Role, allows
from events.models import Event, QueueEntry, SeatHoldGroup, WaitlistEntry
from reservations.models import Car, Reservation
from slots.models import Availability, Slot, SlotBooking
from tests.core.worlds import World, snapshot, world
from tests.factories import UserFactory
from web.webhooks.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db

ROLES = [rung.role for rung in LADDER]

# Who sees each kind of row, as the issue states the ladder: staff the claims, the resources they are on
# and the seat maps; manager also queues and waiting lists; owner also members and webhook endpoints.
VIEW_ROLE: dict[type[Model], Role] = {
    Car: Role.STAFF,
    Reservation: Role.STAFF,
    Event: Role.STAFF,
    SeatHoldGroup: Role.STAFF,
    WaitlistEntry: Role.MANAGER,
    QueueEntry: Role.MANAGER,
    Slot: Role.STAFF,
    SlotBooking: Role.STAFF,
    Availability: Role.STAFF,
    WebhookEndpoint: Role.OWNER,
    WebhookDelivery: Role.OWNER,
    Organisation: Role.STAFF,
    Membership: Role.OWNER,
}


@pytest.fixture
def ours(db) -> World:
    return world("ours")


@pytest.fixture
def theirs(db) -> World:
    return world("theirs")


@pytest.fixture(params=ROLES, ids=[role.value for role in ROLES])
def role(request) -> Role:
    return request.param


@pytest.fixture
def member(role, ours) -> Client:
    """A client signed in as a member of our organisation with ``role`` (is_staff: the admin's door)."""
    user = UserFactory(is_staff=True)
    Membership.objects.create(user=user, organisation=ours.organisation, role=role, created_at=timezone.now())
    client = Client()
    client.force_login(user)
    return client


def url(model: type[Model], page: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{page}", args=args)


def sees(role: Role, model: type[Model]) -> bool:
    return allows(role.value, VIEW_ROLE[model])


def ours_to_write(model: type[Model]) -> bool:
    """A model of the project's own apps (not Django's, DRF's or celery beat's, which members hold no
    model permission of)."""
    return model._meta.app_config.name.split(".")[0] in ("core", "web", "reservations", "events", "slots")


def test_every_admin_page_is_an_organisations_or_the_platforms():
    """A new admin cannot escape the matrix: it is scoped (and listed above) or for superusers alone."""
    for model, model_admin in admin.site._registry.items():
        if ours_to_write(model):
            assert isinstance(model_admin, OrganisationScoped | PlatformAdmin), model
            assert isinstance(model_admin, PlatformAdmin) or model in VIEW_ROLE, model


def test_the_platforms_and_djangos_own_pages_are_closed_to_members(member):
    """Users, groups, tokens, the audit trail, idempotency records: a member holds no model permission."""
    for model, model_admin in admin.site._registry.items():
        if not isinstance(model_admin, OrganisationScoped):
            assert member.get(url(model, "changelist")).status_code == 403, model


@pytest.mark.parametrize("model", list(VIEW_ROLE), ids=lambda m: m.__name__)
def test_a_member_finds_our_rows_and_never_theirs(member, role, ours, theirs, model):
    """The list, and each page of a row: theirs 404 (a post to it changes nothing), ours opens. A role that
    sees no such row anywhere gets 403 for each, whatever the id: that reveals nothing either."""
    before = snapshot(theirs)
    pk = theirs.of(model).pk

    listed = member.get(url(model, "changelist"))
    theirs_answers = [
        member.get(url(model, "change", pk)),
        member.get(url(model, "history", pk)),
        member.get(url(model, "delete", pk)),
        member.post(url(model, "change", pk), {"name": "Taken over", "role": "owner", "url": "https://evil.example"}),
        member.post(url(model, "delete", pk), {"post": "yes"}),
    ]
    our_page = member.get(url(model, "change", ours.of(model).pk))

    if sees(role, model):
        rows = set(listed.context["cl"].queryset.values_list("pk", flat=True))
        assert ours.of(model).pk in rows and pk not in rows
        assert [answer.status_code for answer in theirs_answers] == [404] * len(theirs_answers)
        assert our_page.status_code == 200
    else:
        assert listed.status_code == our_page.status_code == 403
        assert [answer.status_code for answer in theirs_answers] == [403] * len(theirs_answers)
    assert snapshot(theirs) == before


# Each list action, the role it needs (the ladder: claims are staff's, resources, sales, queues and waiting
# lists a manager's, webhooks an owner's) and the row of a world it changes.
ACTIONS = [
    (Reservation, "cancel", Role.STAFF, "reservation"),
    (Reservation, "expire_now", Role.STAFF, "reservation"),
    (SeatHoldGroup, "release_holds", Role.STAFF, "hold"),
    (SeatHoldGroup, "expire_now", Role.STAFF, "hold"),
    (SeatHoldGroup, "cancel_bookings", Role.STAFF, "booking"),
    (SlotBooking, "cancel", Role.STAFF, "slot_booking"),
    (SlotBooking, "expire_now", Role.STAFF, "pending"),
    (Event, "close_sales", Role.MANAGER, "event"),
    (Event, "turn_waitlist_off", Role.MANAGER, "event"),
    (Slot, "cancel_slots", Role.MANAGER, "free_slot"),
    (WaitlistEntry, "remove_entries", Role.MANAGER, "entry"),
    (WebhookEndpoint, "rotate_secret", Role.OWNER, "endpoint"),
    (WebhookDelivery, "retry_now", Role.OWNER, "delivery"),
]


def act(client: Client, model: type[Model], action: str, row: Model):
    form = {"action": action, "_selected_action": [str(row.pk)], "confirmed": "yes"}
    return client.post(url(model, "changelist"), form)


@pytest.mark.parametrize(
    ("model", "action", "needs", "attr"), ACTIONS, ids=[f"{m.__name__}.{a}" for m, a, _, _ in ACTIONS]
)
def test_an_action_changes_our_row_for_the_role_it_needs_and_never_theirs(
    member, role, ours, theirs, model, action, needs, attr
):
    before = snapshot(theirs)
    row = getattr(ours, attr)
    ours_before = model.objects.filter(pk=row.pk).values().get()

    on_theirs = act(member, model, action, getattr(theirs, attr))
    after_theirs = snapshot(theirs)
    act(member, model, action, row)

    # On theirs: run on nothing (302), not offered to this role (200, "no action selected"), or no list (403).
    assert on_theirs.status_code in ((302,) if allows(role.value, needs) else (200, 403))
    assert after_theirs == before
    changed = model.objects.filter(pk=row.pk).values().get() != ours_before
    assert changed is allows(role.value, needs)


EXPORTS = [Reservation, SeatHoldGroup, WaitlistEntry, SlotBooking, WebhookDelivery]


@pytest.mark.parametrize("model", EXPORTS, ids=lambda m: m.__name__)
def test_an_export_has_our_rows_and_never_theirs(member, role, ours, theirs, model):
    listed = member.get(url(model, "export"))
    ticked = member.post(
        url(model, "changelist"),
        {"action": "export_csv", "_selected_action": [str(ours.of(model).pk), str(theirs.of(model).pk)]},
    )

    if not sees(role, model):
        assert listed.status_code == 403
        return
    for response in (listed, ticked):
        text = b"".join(response.streaming_content).decode()
        ids = {line.split(",")[0 if model is not SeatHoldGroup else 1] for line in text.splitlines()[1:]}
        assert str(ours.of(model).pk) in ids
        assert str(theirs.of(model).pk) not in ids


def test_the_bookings_chart_counts_our_bookings_only(member, role, ours, theirs):
    today = timezone.localdate()
    response = member.get(url(SlotBooking, "analytics"), {"start_date": today - timedelta(days=1), "end_date": today})

    assert response.status_code == 200
    assert response.context["analytics"].total_bookings == 2  # ours: the confirmed booking and the pending one


def test_the_seat_map_and_the_week_are_ours_only(member, role, ours, theirs):
    seat_map = member.get(url(Event, "change", ours.event.pk)).content.decode()
    week = member.get(url(Availability, "change", ours.availability.pk)).content.decode()

    assert 'class="seat-map"' in seat_map and 'title="S1 HELD"' in seat_map
    assert "week" in week
    assert member.get(url(Event, "change", theirs.event.pk)).status_code == 404
    assert member.get(url(Availability, "change", theirs.availability.pk)).status_code == 404


def test_a_search_for_their_id_finds_nothing(member, role, ours, theirs):
    response = member.get(url(Reservation, "changelist"), {"q": str(theirs.reservation.pk)})

    assert list(response.context["cl"].queryset) == []


def test_the_invariants_panel_links_our_rows_and_names_none_of_theirs(member, role, ours, theirs):
    mine, other = str(ours.reservation.pk), str(theirs.reservation.pk)
    broken = {"name": "reservations.x", "holds": "Something holds.", "model": "reservations.reservation", "ms": 1}
    InvariantReport.objects.create(
        pk=InvariantReport.ONLY,
        checked_at=timezone.now(),
        duration_ms=1,
        results=[
            {**broken, "violations": 2, "rows": [mine, other]},
            {**broken, "name": "reservations.theirs_only", "violations": 1, "rows": [other]},
        ],
    )

    page = member.get("/admin/").content.decode()

    assert f'href="{url(Reservation, "change", mine)}"' in page
    assert url(Reservation, "change", other) not in page and f">{other}<" not in page
    assert "reservations.theirs_only" not in page
    assert "broken by your organisations' rows" in page


def test_a_superuser_sees_both_organisations(client, staff, ours, theirs):
    client.force_login(staff)

    response = client.get(url(Reservation, "changelist"))

    listed = set(response.context["cl"].queryset.values_list("pk", flat=True))
    assert {ours.reservation.pk, theirs.reservation.pk} <= listed
    assert client.get(url(Reservation, "change", theirs.reservation.pk)).status_code == 200


def test_a_staff_user_of_no_organisation_sees_no_list(client, ours):
    client.force_login(UserFactory(is_staff=True))

    page = client.get("/admin/")

    assert page.status_code == 200 and page.context["app_list"] == []
    assert client.get(url(Reservation, "changelist")).status_code == 403


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def manager_of(*organisations: Organisation):
    user = UserFactory(is_staff=True)
    for organisation in organisations:
        Membership.objects.create(user=user, organisation=organisation, role=Role.MANAGER, created_at=timezone.now())
    return user


CAR = {"dealer_id": "7", "label": "Polestar 2", "make": "Polestar", "model": "2", "status": "ACTIVE"}


def test_a_new_car_goes_to_my_one_organisation_whatever_the_form_says(ours, theirs):
    client = signed_in(manager_of(ours.organisation))

    form = client.get(url(Car, "add")).context["adminform"].form
    client.post(url(Car, "add"), {**CAR, "organisation": theirs.organisation.pk})

    assert list(form.fields["organisation"].queryset) == [ours.organisation]
    assert form.fields["organisation"].disabled  # inferred: the one there is, shown, not asked
    assert Car.objects.get(label="Polestar 2").organisation == ours.organisation


def test_a_member_of_two_chooses_among_them_and_never_a_third(ours, theirs):
    third = Organisation.objects.create(name="Third", slug="third", created_at=timezone.now())
    client = signed_in(manager_of(ours.organisation, third))

    choices = client.get(url(Car, "add")).context["adminform"].form.fields["organisation"].queryset
    refused = client.post(url(Car, "add"), {**CAR, "organisation": theirs.organisation.pk})
    chosen = client.post(url(Car, "add"), {**CAR, "label": "Chosen", "organisation": third.pk})

    assert set(choices) == {ours.organisation, third}
    assert refused.status_code == 200 and not Car.objects.filter(label="Polestar 2").exists()
    assert chosen.status_code == 302 and Car.objects.get(label="Chosen").organisation == third


def test_an_owner_adds_a_member_by_email_changes_their_role_and_removes_them(ours):
    owner, newcomer = ours.membership.user, UserFactory(email="new@example.com")
    client = signed_in(owner)

    added = client.post(url(Membership, "add"), {"email": "NEW@example.com", "role": Role.STAFF})
    membership = Membership.objects.get(user=newcomer)
    changed = client.post(url(Membership, "change", membership.pk), {"role": Role.MANAGER})
    promoted = Membership.objects.get(pk=membership.pk).role
    removed = client.post(url(Membership, "delete", membership.pk), {"post": "yes"})

    assert added.status_code == changed.status_code == removed.status_code == 302
    assert membership.organisation == ours.organisation and promoted == Role.MANAGER
    assert not Membership.objects.filter(user=newcomer).exists()


def test_the_last_owner_is_neither_removed_nor_demoted_in_the_admin_the_refusal_says_why(ours):
    last = ours.membership
    client = signed_in(last.user)

    deleted = client.post(url(Membership, "delete", last.pk), {"post": "yes"})
    acted = client.post(url(Membership, "changelist"), {"action": "remove_members", "_selected_action": [str(last.pk)]})
    demoted = client.post(url(Membership, "change", last.pk), {"role": Role.STAFF})

    assert deleted.status_code == 302 and deleted.url == url(Membership, "change", last.pk)
    said = [str(m) for m in get_messages(acted.wsgi_request)]  # the delete page's, then the action's
    assert [m.split(":")[0] for m in said] == ["Not removed", "Not changed"] and all("last owner" in m for m in said)
    assert demoted.status_code == 200 and "last owner" in demoted.content.decode()
    assert Membership.objects.get(pk=last.pk).role == Role.OWNER
    actions = dict(client.get(url(Membership, "changelist")).context["action_form"].fields["action"].choices)
    assert "remove_members" in actions and "delete_selected" not in actions  # it would say "deleted"


def test_an_unknown_email_is_a_form_error(ours):
    response = signed_in(ours.membership.user).post(
        url(Membership, "add"), {"email": "nobody@example.com", "role": Role.STAFF}
    )

    assert response.status_code == 200 and "No user has this email." in response.content.decode()


def test_a_superuser_makes_an_organisation_and_a_taken_slug_is_a_form_error(client, staff):
    client.force_login(staff)

    made = client.post(url(Organisation, "add"), {"name": "Clinic", "slug": "clinic"})
    again = client.post(url(Organisation, "add"), {"name": "Clinic two", "slug": "clinic"})

    assert made.status_code == 302 and Organisation.objects.get(slug="clinic").name == "Clinic"
    assert again.status_code == 200 and "already" in again.content.decode()


def test_an_owner_makes_no_organisation(ours):
    assert signed_in(ours.membership.user).get(url(Organisation, "add")).status_code == 403


@pytest.mark.parametrize(
    ("model", "action", "needs", "attr"), ACTIONS, ids=[f"{m.__name__}.{a}" for m, a, _, _ in ACTIONS]
)
def test_the_services_behind_each_action_refuse_their_row_even_past_the_list(ours, theirs, model, action, needs, attr):
    """Below the list's scoping, the service each action calls checks the actor's organisation itself: an
    action handed their row directly (as a bug in a queryset would) changes nothing and says why."""
    owner = ours.membership.user  # every rung
    request = RequestFactory().post(url(model, "changelist"), {"confirmed": "yes"})
    request.user, request.session = owner, {}
    request._messages = FallbackStorage(request)
    model_admin = admin.site.get_model_admin(model)
    before = snapshot(theirs)

    model_admin.get_action(action)[0](model_admin, request, model.objects.filter(pk=getattr(theirs, attr).pk))

    assert snapshot(theirs) == before
    said = [str(message) for message in get_messages(request)]
    assert any("Not changed" in message and "does not exist" in message for message in said), said


# Django's autocomplete view answers for any foreign key whose target's admin has search fields, declared
# autocomplete or not: its results are the target admin's list, searched.
AUTOCOMPLETE = [
    (Reservation, "car", Car),
    (SeatHoldGroup, "event", Event),
    (SlotBooking, "slot", Slot),
    (Membership, "organisation", Organisation),
    (WebhookDelivery, "endpoint", WebhookEndpoint),
]


@pytest.mark.parametrize(("source", "field", "target"), AUTOCOMPLETE, ids=lambda v: getattr(v, "__name__", v))
def test_the_autocomplete_finds_ours_and_never_theirs(member, role, ours, theirs, source, field, target):
    query = {"app_label": source._meta.app_label, "model_name": source._meta.model_name, "field_name": field}

    response = member.get("/admin/autocomplete/", {**query, "term": ""})

    if not sees(role, target):
        assert response.status_code == 403
        return
    found = {result["id"] for result in response.json()["results"]}
    assert str(ours.of(target).pk) in found and str(theirs.of(target).pk) not in found


def test_a_member_searches_no_user(member):
    """Users are the platform's (hosts are chosen from the organisation's members on the forms)."""
    query = {"app_label": "slots", "model_name": "slot", "field_name": "host", "term": ""}

    assert member.get("/admin/autocomplete/", query).status_code == 403


@pytest.mark.parametrize("page", ["add", "bulk_add"])
def test_a_manager_adds_slots_for_the_hosts_of_their_organisation_only(ours, theirs, page):
    client = signed_in(manager_of(ours.organisation))

    form = client.get(url(Slot, page)).context["adminform"].form

    assert list(form.fields["host"].queryset) == [ours.slot.host]
    assert list(form.fields["organisation"].queryset) == [ours.organisation]


def test_a_manager_gives_hours_to_the_hosts_of_their_organisation_only(ours, theirs):
    client = signed_in(manager_of(ours.organisation))

    form = client.get(url(Availability, "add")).context["adminform"].form

    assert list(form.fields["host"].queryset) == [ours.slot.host]
