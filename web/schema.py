"""The OpenAPI schema tells the truth (docs/decisions/0011-schema-refusals.md): every operation lists
every error status it can answer, each with its codes, in the one envelope (docs/contract.md §3.2).

A view method lists only the refusals its own code raises, with ``errors(...)``; ``ApiSchema`` (the
DRF ``DEFAULT_SCHEMA_CLASS``) adds what follows from the view's kind. Its own module, not
``web.api``: drf-spectacular's AutoSchema imports DRF's generics, which import the
pagination class of ``web.api``.
"""

from __future__ import annotations

import re

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import exceptions as drf
from rest_framework import serializers
from rest_framework.permissions import SAFE_METHODS
from rest_framework.views import APIView

from core.errors import (
    Busy,
    DomainError,
    IdempotencyKeyReused,
    NotFound,
    PayloadTooLarge,
    RequestInProgress,
    ServiceUnavailable,
    ValidationFailed,
    status_and_code,
)
from web.api import Operators, Superusers

# One error model for every refusal of every operation. The codes an operation's status can answer are
# listed beside it (ERROR_CODES), not narrowed into its schema: a generated client turns each narrowed
# copy into models of its own (openapi-python-client made 1,483 files of them, and kept only the code
# of the merged model: docs/decisions/0018-schema-for-clients.md).
ERROR_SCHEMA = inline_serializer(
    "Error",
    {
        "error": inline_serializer(
            "ErrorBody",
            {
                "code": serializers.CharField(
                    help_text="Stable, for programs: one of the codes the response lists in `x-error-codes`."
                ),
                "message": serializers.CharField(help_text="For people; its wording may change."),
                "details": serializers.DictField(help_text="What the code says it carries (docs/contract.md §3.2)."),
            },
        )
    },
)
# The response's own list of the codes it can carry (an OpenAPI extension: generators leave it alone).
ERROR_CODES = "x-error-codes"

Refusal = type[DomainError] | type[drf.APIException]


def errors(*refusals: Refusal) -> dict[int, OpenApiResponse]:
    """Schema entries for the refusals a view method raises itself (its domain errors), in the one
    envelope, by status: ``responses={201: CarOut, **errors(CarUnavailable, NotFound)}``. What every
    view of its kind can answer (401, 403 for writes, 404 for an id in the path, 400/413/415 for a
    body, the Idempotency-Key's 409 and 422, 429, 503, …) is added by ``ApiSchema``: list only what
    the method's own code raises."""
    return {
        status: OpenApiResponse(ERROR_SCHEMA, description=_codes_text(codes))
        for status, codes in _by_status(refusals).items()
    }


def _by_status(refusals) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for refusal in refusals:
        status, code = status_and_code(refusal)
        found.setdefault(status, set()).add(code)
    return found


def _codes_text(codes) -> str:
    return ", ".join(f"`{code}`" for code in sorted(codes))


RETRY_AFTER = {429, 503}  # throttled; busy and unavailable: every one of them says when to try again
RETRY_AFTER_HEADER = {"schema": {"type": "integer", "minimum": 1}, "description": "Seconds to wait before a retry."}


class ApiSchema(AutoSchema):
    """The schema of every operation, with the refusals it can answer derived from what its view is
    (docs/decisions/0011-schema-refusals.md): each error status once, its codes listed in the
    description and in ``x-error-codes`` beside the one ``Error`` model, so a client (and schemathesis,
    with tests/web/schemathesis_hooks.py) sees the truth.

    A view method lists only its own domain errors with ``errors(...)``; this adds what follows from
    its kind. To document a new refusal that every view of some kind can answer, add a line to
    ``derived_refusals``."""

    def get_override_parameters(self):
        parameters = super().get_override_parameters()
        if self._idempotent():
            parameters = [*parameters, IDEMPOTENCY_KEY]
        return parameters

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query" and not parameter.get("required"):
                # An empty value is no filter, as the browsable API's filter form sends it (django-filter
                # and PagePagination both read "" as absent).
                parameter["allowEmptyValue"] = True
        responses = operation["responses"]
        statuses = _by_status(self.derived_refusals(operation))
        # What the view lists with errors(...): its codes, read back from the descriptions it wrote.
        for status, response in responses.items():
            if status.isdigit() and int(status) >= 400 and response.get("description", "").startswith("`"):
                statuses.setdefault(int(status), set()).update(re.findall(r"`([a-z_]+)`", response["description"]))
        for status, codes in sorted(statuses.items()):
            existing = responses.get(str(status))
            if existing is not None and not existing.get("description", "").startswith("`"):
                continue  # a response of its own (the health check's 503 names its checks)
            response = self._get_response_for_code(OpenApiResponse(ERROR_SCHEMA), str(status))
            response["description"] = _codes_text(codes)
            response[ERROR_CODES] = sorted(codes)
            if status in RETRY_AFTER:
                response["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
            responses[str(status)] = response
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def derived_refusals(self, operation: dict) -> list[Refusal]:
        """What every view of this kind can answer, from its authentication, permissions, path,
        parameters, body, idempotency and throttling (docs/contract.md §3.2)."""
        view, unsafe = self.view, self.method not in SAFE_METHODS
        parameters = operation.get("parameters", [])
        # Any operation: an Accept header it cannot render; the database down.
        refusals: list[Refusal] = [drf.NotAcceptable, ServiceUnavailable]
        if view.get_authenticators():
            refusals.append(drf.NotAuthenticated)  # no or a bad token, even where anyone may call
        if unsafe or any(isinstance(p, (Operators, Superusers)) for p in view.get_permissions()):
            refusals.append(drf.PermissionDenied)  # operators only; a session without its CSRF token
        if any(p["in"] == "path" for p in parameters):
            refusals.append(NotFound)
        if "requestBody" in operation or any(p["in"] in ("query", "header") for p in parameters):
            refusals.append(ValidationFailed)
        if "requestBody" in operation:
            refusals += [PayloadTooLarge, drf.UnsupportedMediaType]
        if unsafe:
            refusals.append(Busy)  # a lock wait past DB_LOCK_TIMEOUT_MS
        if self._idempotent():
            refusals += [RequestInProgress, IdempotencyKeyReused]
        if _throttled(type(view)):
            refusals.append(drf.Throttled)
        return refusals

    def _idempotent(self) -> bool:
        handler = getattr(self.view, self.method.lower(), None)
        return getattr(handler, "idempotent", False)


def _throttled(view_class: type) -> bool:
    """Throttled unless the view opts out itself (``throttle_classes = []``, the health check): the
    schema says what production does whether or not this process throttles."""
    for klass in view_class.__mro__:
        if klass is APIView:
            return True
        if "throttle_classes" in vars(klass):
            return bool(vars(klass)["throttle_classes"])
    return True


# What the server takes as a key (web.idempotency.VALID_KEY), as a header can carry it: HTTP
# trims the spaces around a header's value, so a key is printable with no space at either end.
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": r"^[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?$",
    },
    location=OpenApiParameter.HEADER,
    required=False,
    description="1 to 255 printable characters. A retry with the same key replays the first response.",
)
