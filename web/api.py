"""Pieces every app's API shares: strict input serializers, the page envelope, filters (the schema's
refusals are web.schema)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any, ClassVar, cast

import django_filters as filters
from django import forms
from django.utils.datastructures import MultiValueDict
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import SkipField, empty
from rest_framework.pagination import BasePagination
from rest_framework.permissions import SAFE_METHODS, IsAuthenticated
from rest_framework.response import Response
from rest_framework.utils import html

from core.errors import ValidationFailed
from core.organisations import access
from web.idempotency import BODY_ALIAS, body_key


class Operators(IsAuthenticated):
    """Operators only: a superuser, or a member of some organisation (docs/contract.md §2.6); which
    organisation's objects they reach, and with which role, the service decides (404 outside theirs)."""

    def has_permission(self, request, view):
        return super().has_permission(request, view) and access.is_operator(request.user)


class Superusers(IsAuthenticated):
    """The platform's operators only (``is_superuser``): what spans every organisation."""

    def has_permission(self, request, view):
        return super().has_permission(request, view) and request.user.is_superuser


class OperatorWrites(IsAuthenticated):
    """Anyone signed in reads; only operators write."""

    def has_permission(self, request, view):
        if request.method in SAFE_METHODS:
            return super().has_permission(request, view)
        return Operators().has_permission(request, view)


def organisation_id_in() -> serializers.IntegerField:
    """``organisationId`` of a body that creates something: the organisation it belongs to, required when
    the caller belongs to several (``core.organisations.access.acting_organisation``)."""
    return serializers.IntegerField(
        min_value=1,
        max_value=BIGINT_MAX,
        required=False,
        help_text="The organisation it belongs to: required when you belong to several",
    )


# Fields whose representation reads only the value and the field's own options (no request, no context,
# no parent): a field shared by every instance of its serializer gives every one the same answer.
_PLAIN_FIELDS = (
    serializers.BooleanField,
    serializers.CharField,
    serializers.ChoiceField,
    serializers.DateField,
    serializers.DateTimeField,
    serializers.DecimalField,
    serializers.FloatField,
    serializers.IntegerField,
    serializers.JSONField,
    serializers.UUIDField,
    serializers.ReadOnlyField,
)

# One readable field of a planned serializer: its name, and either the field (shared, bound to a
# template instance) or the name of the serializer's method that answers it (a SerializerMethodField).
_Step = tuple[str, serializers.Field | None, str | None]


def _plain(field: serializers.Field) -> bool:
    if isinstance(field, serializers.ListField | serializers.DictField):
        return _plain(field.child)
    return isinstance(field, _PLAIN_FIELDS)


class PlannedRepresentation:
    """Output serializers that render an instance without building their fields for it.

    DRF builds and binds every field of a serializer for each instance it renders (a deep copy of the
    declared fields, or the model's introspection), then reads each. For a response of one object that
    was most of the serializer's cost (docs/decisions/0006-request-floor.md). Here the first instance of
    a class binds its fields once, to a template instance, and every later ``to_representation`` reads
    through those, in DRF's order and with DRF's rules (a ``SkipField`` omits the key, ``None`` stays
    ``None``), calling a ``SerializerMethodField``'s method on the serializer at hand. Only fields that
    read nothing but the value are shared (``_PLAIN_FIELDS``); a class with any other field (a nested
    serializer, a related or hyperlinked field) renders as DRF does.
    """

    _plan: ClassVar[list[_Step] | None]  # set on each class by its first rendering

    def to_representation(self, instance):
        cls = type(self)
        if "_plan" not in cls.__dict__:
            cls._plan = _plan_of(cls)
        if cls._plan is None:
            return super().to_representation(instance)  # type: ignore[misc]  # a Serializer's, by the MRO
        ret: dict[str, Any] = {}
        for name, field, method in cls._plan:
            if method is not None:
                ret[name] = getattr(self, method)(instance)
                continue
            assert field is not None  # a step has a field or a method
            try:
                attribute = field.get_attribute(instance)
            except SkipField:
                continue
            ret[name] = None if attribute is None else field.to_representation(attribute)
        return ret


def _plan_of(cls: type) -> list[_Step] | None:
    """The steps of ``cls``'s representation, or None when one of its fields is not plain."""
    template = cls()
    plan: list[_Step] = []
    for field in template._readable_fields:
        if isinstance(field, serializers.SerializerMethodField):
            plan.append((cast(str, field.field_name), None, field.method_name))
        elif _plain(field):
            plan.append((cast(str, field.field_name), field, None))
        else:
            return None
    return plan


class OutputSerializer(PlannedRepresentation, serializers.Serializer):
    """An output shape (``PlannedRepresentation``); input shapes are ``StrictSerializer``s."""


class FieldsBuiltOnce:
    """A serializer whose fields are built once per class instead of once per instance.

    DRF builds every field each time a serializer is created (a deep copy of the declared fields, or the
    model's introspection): a third of the CPU of a small GET (docs/decisions/0006-request-floor.md). The
    fields depend only on the class, so the first instance builds them and every later one gets copies.
    A copy is shallow: binding a field to its serializer sets the copy's own name, parent and source,
    and what copies share (validators, choices, a list's child) is only read, while rendering and while
    validating. A nested serializer is copied whole, because it binds fields of its own.
    """

    _fields_prototype: ClassVar[dict[str, serializers.Field]]  # set on each class by its first instance

    def get_fields(self):
        cls = type(self)
        prototype = cls.__dict__.get("_fields_prototype")
        if prototype is None:
            prototype = super().get_fields()  # type: ignore[misc]  # a Serializer's, by the MRO
            cls._fields_prototype = prototype
        return {
            name: copy.deepcopy(field) if isinstance(field, serializers.BaseSerializer) else copy.copy(field)
            for name, field in prototype.items()
        }


class ModelSerializer(PlannedRepresentation, FieldsBuiltOnce, serializers.ModelSerializer):
    """DRF's ``ModelSerializer``, rendered by plan (``PlannedRepresentation``), its fields built once per
    class where they are built (``FieldsBuiltOnce``: a browsable API form, a nested serializer)."""


class JSONObjectField(serializers.DictField):
    """A JSON object. A JSON body carries it as an object; a form (the browsable API, ``curl -d``) as
    JSON text, parsed here: refused when it is not a JSON object, never silently dropped."""

    def get_value(self, dictionary):
        if html.is_html_input(dictionary):
            return dictionary.get(self.field_name, empty)
        return super().get_value(dictionary)

    def to_internal_value(self, data):
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError:
                raise serializers.ValidationError("Must be a JSON object.") from None
        return super().to_internal_value(data)


class StrictSerializer(FieldsBuiltOnce, serializers.Serializer):
    """An input serializer that refuses unknown fields instead of silently ignoring a typo (its fields
    built once per class: ``FieldsBuiltOnce``).

    A form post (the browsable API's HTML form, ``curl -F``/``-d``) is read as that form means it: its
    CSRF token is not a field, a field left empty is a field not given, a nested field arrives as
    ``layout.rows``, and a list as one comma-separated value or a JSON list (``web.renderers``).
    """

    # Fields a client may always send: the seeds' idempotency alias (docs/contract.md §3.4).
    always_allowed = frozenset({BODY_ALIAS})
    # What Django's form machinery adds to a form post: never the client's field.
    form_controls = frozenset({"csrfmiddlewaretoken"})

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"body": ["Expected a JSON object."]})
        names, form = set(data), html.is_html_input(data)
        if form:  # a field left empty is still a field: an unknown one is refused
            names = {NESTED.split(name, maxsplit=1)[0] for name in data} - self.form_controls
            data = self._form_values(data)
        unknown = names - set(self.fields) - self.always_allowed
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        if not form:
            self._refuse_numbers_for_text(data)
        body_key(data)
        return super().to_internal_value(data)

    def _refuse_numbers_for_text(self, data: dict) -> None:
        """A JSON body gives text as a JSON string, as the schema says: DRF's CharField would take
        ``"name": 0`` as "0" (a form's values are all text, so only JSON is held to it)."""
        wrong = []
        for name, field in self.fields.items():
            value, child = data.get(name), getattr(field, "child", None)
            items = value if isinstance(child, serializers.CharField) and isinstance(value, list) else []
            if (isinstance(field, serializers.CharField) and _number(value)) or any(map(_number, items)):
                wrong.append(name)
        if wrong:
            raise serializers.ValidationError({name: [NOT_TEXT] for name in wrong})

    def _form_values(self, data) -> MultiValueDict:
        values: MultiValueDict[str, Any] = MultiValueDict()
        for name in data:
            # An empty field is one not given, but for a key the form does not offer (``requestId``):
            # there an empty value is one given, and refused as the JSON API would.
            given = [value for value in data.getlist(name) if value != "" or name in self.always_allowed]
            if name in self.form_controls or not given:
                continue
            field = self.fields.get(name)
            if isinstance(field, serializers.ListField) and len(given) == 1 and isinstance(given[0], str):
                items = _form_list(given[0])
                if items is None:
                    raise serializers.ValidationError({name: ["Must be comma-separated or a JSON list."]})
                given = items
            values.setlist(name, given)
        return values

    @classmethod
    def validated(cls, request, **kwargs) -> dict:
        serializer = cls(data=request.data, context={"request": request}, **kwargs)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


NOT_TEXT = serializers.CharField.default_error_messages["invalid"]


def _number(value) -> bool:
    return isinstance(value, int | float)  # bool too: DRF's CharField refuses it anyway


NESTED = re.compile(r"[.\[]")  # a nested form field's name: "layout.rows", "codes[0]" (the field is before it)


def _form_list(text: str) -> list | None:
    """A list given as one form value: a JSON list, or comma-separated items (None: a broken JSON list)."""
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            return None
    return [item.strip() for item in text.split(",") if item.strip()]


WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")  # ASCII digits only: "²".isdigit() is True, int("²") fails


class StrictSerializerSchema(OpenApiSerializerExtension):
    """Say in the schema what StrictSerializer does: no fields beyond the declared ones (and the
    ``requestId`` idempotency alias), so generated clients and fuzzers see the real contract."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = own_description(
            self.target, auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        )
        if direction == "request":
            schema["additionalProperties"] = False
            schema.setdefault("properties", {})[BODY_ALIAS] = {
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "pattern": r"^[^\x00-\x1f\x7f]*$",
                "description": "Same as the Idempotency-Key header.",
            }
        return schema


class OutputSerializerSchema(OpenApiSerializerExtension):
    """An output serializer's schema (a model serializer's too), without the notes of ``ModelSerializer``,
    ``OutputSerializer`` and ``PlannedRepresentation`` on how they render as its description in every
    generated client's models."""

    target_class = PlannedRepresentation
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        return own_description(self.target, auto_schema._map_serializer(self.target, direction, bypass_extensions=True))


def own_description(serializer, schema: dict) -> dict:
    """``schema`` described by its serializer's own docstring only: drf-spectacular falls back on a base
    class's, which is written for this code's developers, not for the API's clients."""
    if type(serializer).__dict__.get("__doc__") is None:
        schema.pop("description", None)
    return schema


class PagePagination(BasePagination):
    """``?page=&limit=`` (default 20, max 100) → ``{"results", "count", "page", "limit"}`` (docs/contract.md §3.1).

    A page past the end is an empty page, not an error: the client learns the total from ``count``.
    """

    default_limit = 20
    max_limit = 100
    max_page = 1_000_000  # keeps the OFFSET far inside a bigint

    def paginate_queryset(self, queryset, request, view=None):
        self.page = self._positive_int(request, "page", 1, self.max_page)
        self.limit = self._positive_int(request, "limit", self.default_limit, self.max_limit)
        self.count = queryset.count()
        offset = (self.page - 1) * self.limit
        return list(queryset[offset : offset + self.limit])

    def get_paginated_response(self, data):
        return Response({"results": data, "count": self.count, "page": self.page, "limit": self.limit})

    @staticmethod
    def _positive_int(request, name: str, default: int, maximum: int) -> int:
        raw = request.query_params.get(name)
        if raw in (None, ""):
            return default
        if not WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= maximum:
            raise ValidationFailed.for_field(name, f"Must be a whole number between 1 and {maximum}.")
        return int(raw)

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["results", "count", "page", "limit"],
            "properties": {
                "results": schema,
                "count": {"type": "integer"},
                "page": {"type": "integer"},
                "limit": {"type": "integer"},
            },
        }

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": "page",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_page},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_limit, "default": 20},
            },
        ]


class AsOfPagePagination(PagePagination):
    """The page envelope plus ``asOf``, for a list served from a recent read (``web.recent``):
    the view adds it, this says so in the schema."""

    def get_paginated_response_schema(self, schema):
        envelope = super().get_paginated_response_schema(schema)
        envelope["required"].append("asOf")
        envelope["properties"]["asOf"] = {
            "type": "string",
            "format": "date-time",
            "description": "When the database was read (at most a second ago): the page and its count as of then",
        }
        return envelope


BIGINT_MAX = 2**63 - 1


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": BIGINT_MAX})
class IdFilter(filters.NumberFilter):
    """An id query parameter: a whole number from 1 to the largest bigint; anything else is a 400
    (``NumberFilter`` alone is a decimal: ``1.5`` would be quietly truncated, ``1e30`` a database error)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs):
        super().__init__(*args, min_value=1, max_value=BIGINT_MAX, **kwargs)


@extend_schema_field(OpenApiTypes.BOOL)
class StrictBooleanFilter(filters.TypedChoiceFilter):
    """A ``true``/``false`` query parameter; anything else is a 400, not silently ignored."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, choices=[("true", "true"), ("false", "false")], coerce=lambda v: v == "true", **kwargs)
