"""A host's availability: ``GET/PUT /api/hosts/me/availability``, ``GET /api/hosts/{id}/availability``."""

import pytest

from core.audit.services import trail
from slots.models import Availability
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

WORK_WEEK = {
    "timeZone": "Europe/Berlin",
    "weekly": [
        {"weekday": 0, "start": "13:00", "end": "17:00"},
        {"weekday": 0, "start": "09:00", "end": "12:00"},
        *({"weekday": day, "start": "09:00", "end": "17:00"} for day in range(1, 5)),
    ],
    "overrides": [
        {"date": "2026-12-27", "windows": [{"start": "10:00", "end": "14:00"}]},
        {"date": "2026-12-24", "windows": []},
    ],
    "durations": [60, 30],
    "minimumNoticeMinutes": 60,
    "bufferMinutes": 10,
}


def problem(response) -> tuple[int, list[str]]:
    return response.status_code, list(response.json()["error"]["details"]["fields"])


def test_a_host_sets_their_hours_and_everyone_signed_in_sees_them(host_api, host, api):
    response = host_api.put("/api/hosts/me/availability", WORK_WEEK, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["hostId"] == host.pk and body["timeZone"] == "Europe/Berlin"
    assert body["weekly"][:2] == [
        {"weekday": 0, "start": "09:00", "end": "12:00"},
        {"weekday": 0, "start": "13:00", "end": "17:00"},
    ]
    assert [o["date"] for o in body["overrides"]] == ["2026-12-24", "2026-12-27"]
    assert (body["durations"], body["minimumNoticeMinutes"], body["bufferMinutes"]) == ([30, 60], 60, 10)
    assert host_api.get("/api/hosts/me/availability").json() == body
    assert api.get(f"/api/hosts/{host.pk}/availability").json() == body


def test_a_new_document_replaces_the_old_one_and_both_are_audited(host_api, host):
    host_api.put("/api/hosts/me/availability", WORK_WEEK, format="json")

    response = host_api.put("/api/hosts/me/availability", {**WORK_WEEK, "bufferMinutes": 0}, format="json")

    assert response.json()["bufferMinutes"] == 0
    availability = Availability.objects.get(host=host)
    assert [(e.event_type, e.actor_id) for e in trail(availability)] == [("CREATED", host.pk), ("UPDATED", host.pk)]
    assert trail(availability)[1].metadata["fields"] == ["buffer_minutes"]


def test_a_host_without_hours_has_nothing_bookable(host_api, host):
    body = host_api.get("/api/hosts/me/availability").json()

    assert (body["weekly"], body["durations"], body["updatedAt"]) == ([], [], None)


def test_only_hosts_have_availability(api, host):
    guest = UserFactory()

    assert api.put("/api/hosts/me/availability", WORK_WEEK, format="json").status_code == 403
    assert api.get("/api/hosts/me/availability").status_code == 403
    assert api.get(f"/api/hosts/{guest.pk}/availability").status_code == 404
    assert api.get("/api/hosts/999999/availability").status_code == 404
    assert not Availability.objects.exists()


@pytest.mark.parametrize(
    "document",
    [
        {**WORK_WEEK, "timeZone": "Mars/Olympus"},  # what the hours' own checks refuse
        {**WORK_WEEK, "durations": []},  # and the fields'
        {**WORK_WEEK, "colour": "blue"},  # and the strict body's
    ],
)
def test_a_non_host_is_refused_before_the_document_is_read(api, document):
    response = api.put("/api/hosts/me/availability", document, format="json")

    assert (response.status_code, response.json()["error"]["code"]) == (403, "forbidden")
    assert not Availability.objects.exists()


def test_availability_is_for_signed_in_callers(client_for, host):
    assert client_for(None).get(f"/api/hosts/{host.pk}/availability").status_code == 401


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"timeZone": "Mars/Olympus"}, "timeZone"),
        ({"timeZone": "../../etc/passwd"}, "timeZone"),
        ({"weekly": [{"weekday": 0, "start": "12:00", "end": "09:00"}]}, "weekly[0].end"),
        ({"weekly": [{"weekday": 0, "start": "09:00", "end": "09:00"}]}, "weekly[0].end"),
        (
            {
                "weekly": [
                    {"weekday": 1, "start": "09:00", "end": "12:00"},
                    {"weekday": 1, "start": "11:00", "end": "13:00"},
                ]
            },
            "weekly[1]",
        ),
        ({"weekly": [{"weekday": 2, "start": "9:00", "end": "12:00"}]}, "weekly[0].start"),
        ({"weekly": [{"weekday": 2, "start": "24:00", "end": "24:00"}]}, "weekly[0].start"),
        ({"weekly": [{"weekday": 7, "start": "09:00", "end": "12:00"}]}, "weekly"),
        ({"overrides": [{"date": "2026-02-30", "windows": []}]}, "overrides[0].date"),
        (
            {"overrides": [{"date": "2026-12-24", "windows": []}, {"date": "2026-12-24", "windows": []}]},
            "overrides[1].date",
        ),
        (
            {
                "overrides": [
                    {
                        "date": "2026-12-24",
                        "windows": [{"start": "10:00", "end": "12:00"}, {"start": "08:00", "end": "10:30"}],
                    }
                ]
            },
            "overrides[0].windows[0]",
        ),
        ({"durations": []}, "durations"),
        ({"durations": [30, 30]}, "durations"),
        ({"durations": [2]}, "durations"),
        ({"bufferMinutes": -1}, "bufferMinutes"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_hours_are_a_400_naming_the_field_and_change_nothing(host_api, host, change, field):
    host_api.put("/api/hosts/me/availability", WORK_WEEK, format="json")

    response = host_api.put("/api/hosts/me/availability", {**WORK_WEEK, **change}, format="json")

    assert problem(response) == (400, [field]), response.content
    assert Availability.objects.get(host=host).buffer_minutes == 10


def test_a_window_may_end_at_midnight_and_windows_may_touch(host_api):
    weekly = [{"weekday": 5, "start": "18:00", "end": "24:00"}, {"weekday": 5, "start": "12:00", "end": "18:00"}]

    response = host_api.put("/api/hosts/me/availability", {**WORK_WEEK, "weekly": weekly}, format="json")

    assert response.status_code == 200, response.content
    assert [w["start"] for w in response.json()["weekly"]] == ["12:00", "18:00"]
