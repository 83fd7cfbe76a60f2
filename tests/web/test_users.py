import pytest

from web.accounts.models import User

pytestmark = pytest.mark.django_db


def register(client, **body):
    return client.post(
        "/api/users", {"email": "ada@example.com", "name": "Ada", "roles": ["HOST"], **body}, format="json"
    )


def test_register_returns_the_user_and_a_working_token(client_for):
    response = register(client_for(None))

    assert response.status_code == 201
    body = response.json()
    assert (body["email"], body["name"], body["roles"], body["isStaff"]) == ("ada@example.com", "Ada", ["HOST"], False)
    me = client_for(None)
    me.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")
    assert me.get("/api/users/me").json()["id"] == body["id"]


def test_roles_default_to_none(client_for):
    response = client_for(None).post("/api/users", {"email": "b@example.com", "name": "B"}, format="json")

    assert response.status_code == 201 and response.json()["roles"] == []


def test_an_email_is_taken_whatever_its_case(client_for):
    register(client_for(None))

    response = register(client_for(None), email="ADA@example.com")

    assert response.status_code == 409 and response.json()["error"]["code"] == "email_taken"
    assert User.objects.filter(email__iexact="ada@example.com").count() == 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({"email": "not-an-email"}, "email"),
        ({"roles": ["ADMIN"]}, "roles"),
        ({"roles": "HOST"}, "roles"),
        ({"name": ""}, "name"),
        ({"name": 0}, "name"),  # text is a JSON string, as the schema says (DRF would take "0")
        ({"isStaff": True}, "isStaff"),
        ({"password": "short"}, "password"),
        ({"requestId": "k" * 256}, "requestId"),  # what the schema says of every body's requestId
        ({"requestId": "k\x07"}, "requestId"),
    ],
)
def test_invalid_registrations(client_for, body, field):
    response = register(client_for(None), **body)

    assert response.status_code == 400 and field in response.json()["error"]["details"]["fields"]


def test_a_password_lets_the_user_log_in_to_the_browsable_api(client_for, client):
    register(client_for(None), password="a-long-passphrase")

    assert client.login(username="ada@example.com", password="a-long-passphrase")
    assert client.get("/api/users/me").json()["email"] == "ada@example.com"


def test_me_needs_credentials(client_for):
    assert client_for(None).get("/api/users/me").status_code == 401


def test_me(api, user):
    body = api.get("/api/users/me").json()

    assert body["id"] == user.pk and body["email"] == user.email and "token" not in body


def test_an_empty_request_id_in_a_form_is_refused_as_in_json(client_for):
    """A form's empty field is one not given, but ``requestId`` is no field of a form: empty, it is a
    key given, and too short (what schemathesis found: a multipart registration with ``requestId=``)."""
    response = client_for(None).post("/api/users", {"email": "f@example.com", "name": "F", "requestId": ""})

    assert response.status_code == 400 and "requestId" in response.json()["error"]["details"]["fields"]
