"""What every API request pays before its own work (docs/decisions/0006-request-floor.md): the token
lookup is cached per process, JSON is rendered by orjson exactly as DRF would, model serializers build
their fields once, and a dead database connection costs one 503, not a health check per request."""

import datetime as dt
import json
import time
import urllib.error
import urllib.request
import uuid
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.utils.translation import gettext_lazy
from rest_framework import renderers, serializers
from rest_framework.authtoken.models import Token
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from reservations.api.serializers import ReservationCreateIn
from tests.factories import UserFactory
from web.accounts import auth
from web.accounts.api.serializers import UserOut
from web.api import OutputSerializer
from web.renderers import BrowsableAPIRenderer, ContentNegotiation, JSONRenderer


def me(client):
    return client.get("/api/users/me")


def test_a_known_token_costs_no_statement(api, django_assert_num_queries):
    me(api)  # the first request looks the token up

    with django_assert_num_queries(0):
        response = me(api)

    assert response.status_code == 200


def test_an_unseen_token_costs_one_statement_and_reads_what_the_orm_reads(user, django_assert_num_queries):
    auth._cache.clear()

    with django_assert_num_queries(1):
        auth_user, token = auth.CachedTokenAuthentication().authenticate_credentials(user.auth_token.key)

    stored = Token.objects.select_related("user").get(key=user.auth_token.key)
    assert (token.key, token.user_id, token.created) == (stored.key, stored.user_id, stored.created)
    fields = [field.attname for field in type(user)._meta.concrete_fields]
    assert [getattr(auth_user, name) for name in fields] == [getattr(stored.user, name) for name in fields]
    assert not auth_user._state.adding and auth_user._state.db == stored.user._state.db


@pytest.mark.parametrize(
    ("case", "message"), [("unknown", "Invalid token."), ("inactive", "User inactive or deleted.")]
)
def test_a_refused_token_says_what_drf_says(client_for, user, case, message):
    key = user.auth_token.key
    if case == "unknown":
        key = "x" * len(key)
    else:
        type(user).objects.filter(pk=user.pk).update(is_active=False)
    auth._cache.clear()

    client = client_for(None)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = client.get("/api/users/me")

    assert response.status_code == 401 and response.json()["error"]["message"] == message


def test_a_deleted_token_is_refused_at_once(api, user):
    assert me(api).status_code == 200

    Token.objects.filter(user=user).delete()

    assert me(api).status_code == 401


def test_a_deactivated_user_is_refused_at_once(api, user):
    assert me(api).status_code == 200

    user.is_active = False
    user.save()

    assert me(api).status_code == 401


def test_a_role_change_is_seen_at_once(api, user):
    assert me(api).json()["isStaff"] is False

    user.is_staff = True
    user.save()

    assert me(api).json()["isStaff"] is True


def test_a_change_without_signals_is_seen_once_the_cache_lifetime_has_passed(api, user):
    assert me(api).status_code == 200

    type(user).objects.filter(pk=user.pk).update(is_active=False)  # a bulk update sends no signal
    assert me(api).status_code == 200  # the documented bound: up to AUTH_TOKEN_CACHE_SECONDS

    auth._cache.expire(time.monotonic() + settings.AUTH_TOKEN_CACHE_SECONDS)
    assert me(api).status_code == 401


def test_a_view_changing_its_user_does_not_change_the_next_request(api, user):
    auth_user, token = auth.CachedTokenAuthentication().authenticate_credentials(user.auth_token.key)
    auth_user.name = "changed by a view"
    auth_user._state.fields_cache["seen"] = True

    assert me(api).json()["name"] == user.name
    assert auth_user._state is not token.user._state and "seen" not in token.user._state.fields_cache
    assert auth_user == token.user and not auth_user._state.adding


def test_orjson_writes_the_bytes_drf_writes():
    data = {
        "text": "Grüße ✓",
        "when": dt.datetime(2026, 12, 1, 10, 30, 15, 123456, tzinfo=dt.UTC),
        "day": dt.date(2026, 12, 24),
        "price": Decimal("12.50"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "lazy": gettext_lazy("hello"),
        "nested": {"list": [1, 2.5, None, True], "empty": {}},
        7: "an integer key",
    }

    assert JSONRenderer().render(data) == renderers.JSONRenderer().render(data)


def test_the_browsable_api_still_gets_indented_json():
    rendered = JSONRenderer().render({"a": 1}, "application/json; indent=4")

    assert json.loads(rendered) == {"a": 1} and b"\n    " in rendered


def test_input_serializer_fields_are_built_once_and_never_shared():
    first = ReservationCreateIn(data={"carId": 0})
    second = ReservationCreateIn(data={"carId": 7, "holdDurationMinutes": 30})

    assert all(first.fields[name] is not second.fields[name] for name in first.fields)
    assert first.fields["carId"].parent is first and second.fields["carId"].parent is second
    assert not first.is_valid() and list(first.errors) == ["carId"]
    assert second.is_valid() and second.validated_data == {"carId": 7, "holdDurationMinutes": 30}


@pytest.mark.django_db
def test_model_serializer_fields_are_built_once_and_never_shared():
    first, second = UserOut(UserFactory()), UserOut(UserFactory())

    assert list(first.fields) == ["id", "email", "name", "roles", "isStaff", "createdAt"]
    assert all(first.fields[name] is not second.fields[name] for name in first.fields)
    assert first.fields["email"].parent is first and second.fields["email"].parent is second
    assert first.data["email"] != second.data["email"]


@pytest.mark.slow
def test_a_dropped_database_connection_is_one_clean_503_then_the_server_recovers(served):
    token = UserFactory().auth_token.key

    def get(path: str):
        request = urllib.request.Request(served + path, headers={"Authorization": f"Token {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, error.headers, json.load(error)

    assert get("/api/cars")[0] == 200  # the worker now holds an open connection

    # What a PostgreSQL restart does to open connections: the server ends them.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    status, headers, body = get("/api/cars")
    assert (status, body["error"]["code"], headers["Retry-After"]) == (503, "unavailable", "5")
    assert get("/api/cars")[0] == 200


@pytest.mark.django_db
def test_model_serializers_render_what_drf_renders(user):
    class StockUserOut(serializers.ModelSerializer):
        isStaff = serializers.BooleanField(source="is_staff")
        createdAt = serializers.DateTimeField(source="date_joined")

        class Meta(UserOut.Meta):
            pass

    assert UserOut(user).data == StockUserOut(user).data
    assert UserOut([user, user], many=True).data == StockUserOut([user, user], many=True).data


class Shape(OutputSerializer):
    id = serializers.IntegerField()
    when = serializers.DateTimeField(allow_null=True)
    codes = serializers.ListField(child=serializers.CharField(), source="seat_codes")
    optional = serializers.CharField(required=False)
    label = serializers.SerializerMethodField()
    secret = serializers.CharField(write_only=True)

    def get_label(self, shape) -> str:
        return f"#{shape['id']} of {self.context['of']}"


@pytest.mark.parametrize(
    "shape",
    [
        {"id": 1, "when": dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.UTC), "seat_codes": ["S1"], "optional": "x"},
        {"id": 2, "when": None, "seat_codes": [], "secret": "never shown"},  # no "optional": omitted
    ],
)
def test_an_output_serializer_renders_by_plan_what_drf_renders(shape):
    planned = Shape(shape, context={"of": "these"}).data

    assert planned == serializers.Serializer.to_representation(Shape(context={"of": "these"}), shape)
    assert list(planned) == [name for name in ["id", "when", "codes", "optional", "label"] if name in planned]
    assert Shape._plan is not None


def test_an_output_serializer_with_a_nested_one_renders_as_drf_does():
    class Nested(OutputSerializer):
        shapes = Shape(many=True)

    data = Nested({"shapes": [{"id": 3, "when": None, "seat_codes": ["S2"]}]}, context={"of": "those"}).data

    assert data == {"shapes": [{"id": 3, "when": None, "codes": ["S2"], "label": "#3 of those"}]}
    assert Nested._plan is None


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "text/html", "application/json; indent=4", "a/b"])
@pytest.mark.parametrize("query", ["", "?format=json", "?format=api", "?page=2"])
def test_content_negotiation_answers_what_drf_answers(accept, query):
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().get(f"/api/users/me{query}", **headers))
    available = [JSONRenderer(), BrowsableAPIRenderer()]

    def negotiate(negotiation):
        try:
            renderer, media_type = negotiation.select_renderer(request, available)
        except Exception as error:
            return type(error)
        return type(renderer), media_type

    assert negotiate(ContentNegotiation()) == negotiate(DefaultContentNegotiation())
