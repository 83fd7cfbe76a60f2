"""Errors: one base class, one envelope (docs/contract.md §3.2), one DRF exception handler.

Code raises a ``DomainError`` subclass and never builds an error response by hand:

    {"error": {"code": "car_unavailable", "message": "...", "details": {}}}

A class's ``status`` and ``code`` are what the OpenAPI schema lists for the endpoints that raise it
(``status_and_code``; a view names its classes in ``web.schema.errors(...)``), and README's
error table lists every code by status.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import DatabaseError, DataError, OperationalError, connection
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from psycopg import errors as pg_errors
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.metrics import CONFLICTS
from core.middleware import is_api

logger = logging.getLogger(__name__)


class DomainError(Exception):
    """An expected refusal: carries its HTTP status, a stable code and a message for people."""

    status = 400
    code = "bad_request"
    message = "The request was refused."
    headers: dict[str, str] = {}

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None):
        self.message = message or self.message
        self.details = details or {}
        super().__init__(self.message)


class ValidationFailed(DomainError):
    status, code, message = 400, "validation_error", "The request is not valid."

    @classmethod
    def for_field(cls, field: str, problem: str) -> ValidationFailed:
        return cls(f"{field}: {problem}", details={"fields": {field: [problem]}})


def bounded(value: object, field: str, low: int, high: int) -> int:
    """``value`` when it is a whole number from ``low`` to ``high``; else the 400 naming ``field``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValidationFailed.for_field(field, f"Must be a whole number from {low} to {high}.")
    return value


class InvalidStateTransition(DomainError):
    status, code = 400, "invalid_state_transition"

    def __init__(self, *, subject: str, from_state: str, to_state: str):
        super().__init__(
            f"{subject} is {from_state} and cannot become {to_state}.",
            details={"fromState": from_state, "toState": to_state},
        )


class Forbidden(DomainError):
    status, code, message = 403, "forbidden", "You are not allowed to do this."


class NotOwner(DomainError):
    status, code, message = 403, "not_owner", "This belongs to another user."


class NotFound(DomainError):
    status, code, message = 404, "not_found", "No such object."


class Conflict(DomainError):
    status, code, message = 409, "conflict", "The resource is taken."


class LimitReached(Conflict):
    """A per-user cap refused the request (``core.policy.Cap``): ``details.rule`` names the rule,
    ``details.limit`` its limit (docs/contract.md §3.2)."""

    code, message = "limit_reached", "A limit on what one user may hold at once is reached."


class RequestInProgress(Conflict):
    """The first request with this key is still in its transaction. It ends (and its lock with it) within
    that request's own duration, which a lock wait bounds at DB_LOCK_TIMEOUT_MS: the wait said."""

    code, message = "request_in_progress", "A request with this Idempotency-Key is still being processed."

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None):
        super().__init__(message, details=details)
        self.headers = {"Retry-After": str(max(1, math.ceil(settings.DB_LOCK_TIMEOUT_MS / 1000)))}


class HoldExpired(DomainError):
    status, code, message = 410, "hold_expired", "The hold has expired."


class IdempotencyKeyReused(DomainError):
    status, code = 422, "idempotency_key_reused"
    message = "This Idempotency-Key was used with a different request."


class PayloadTooLarge(DomainError):
    status, code = 413, "payload_too_large"

    def __init__(self):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        super().__init__(f"The request body is larger than {limit} bytes.", details={"maxBytes": limit})


class ServiceUnavailable(DomainError):
    status, code, message = 503, "unavailable", "The database is unavailable; try again shortly."
    headers = {"Retry-After": "5"}


class SchemaChanged(ServiceUnavailable):
    """A statement prepared on this connection before a migration changed what it returns
    (docs/decisions/0021-prepared-statements.md): the connection is dropped, the retry runs on a new one."""

    message = "The database schema changed under this request; try again."
    headers = {"Retry-After": "1"}


class Busy(ServiceUnavailable):
    code, message = "busy", "The resource is busy; try again shortly."
    headers = {"Retry-After": "1"}


def envelope(code: str, message: str, details: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or {}}}


# DRF's own exceptions, mapped onto the codes of docs/contract.md §3.2.
_DRF_CODES: list[tuple[type[drf.APIException], int, str]] = [
    (drf.NotAuthenticated, 401, "not_authenticated"),
    (drf.AuthenticationFailed, 401, "not_authenticated"),
    (drf.PermissionDenied, 403, "forbidden"),
    (drf.NotFound, 404, "not_found"),
    (drf.MethodNotAllowed, 405, "method_not_allowed"),
    (drf.NotAcceptable, 406, "not_acceptable"),
    (drf.UnsupportedMediaType, 415, "unsupported_media_type"),
    (drf.Throttled, 429, "throttled"),
]


def status_and_code(refusal: type[DomainError] | type[drf.APIException]) -> tuple[int, str]:
    """The status and code a client gets for this kind of error (the schema documents them)."""
    if issubclass(refusal, DomainError):
        return refusal.status, refusal.code
    for klass, status, code in _DRF_CODES:
        if issubclass(refusal, klass):
            return status, code
    raise ValueError(f"{refusal.__name__} does not answer in the envelope")


def _field_details(detail: Any) -> dict:
    """Flatten DRF's error detail into {"fields": {name: [messages]}}; non-field errors under "body"."""
    if isinstance(detail, dict):
        fields = {}
        for name, errors in detail.items():
            key = "body" if name == "non_field_errors" else name
            fields[key] = [str(e) for e in errors] if isinstance(errors, list) else _nested(errors)
        return {"fields": fields}
    if isinstance(detail, list):
        return {"fields": {"body": [str(e) for e in detail]}}
    return {"fields": {"body": [str(detail)]}}


def _nested(errors: Any) -> Any:
    if isinstance(errors, dict):
        return {k: _nested(v) for k, v in errors.items()}
    if isinstance(errors, list):
        return [_nested(e) for e in errors]
    return str(errors)


def _summary(details: dict) -> str:
    parts = []
    for name, problems in details.get("fields", {}).items():
        first = problems[0] if isinstance(problems, list) and problems else problems
        parts.append(f"{name}: {first}")
    return "; ".join(parts) or "The request is not valid."


def to_domain_error(exc: Exception) -> DomainError | None:
    """Translate a known non-domain exception into the DomainError a client should see."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, drf.ValidationError):
        details = _field_details(exc.detail)
        return ValidationFailed(_summary(details), details=details)
    if isinstance(exc, drf.ParseError):
        return ValidationFailed(
            f"Malformed request body: {exc.detail}", details={"fields": {"body": [str(exc.detail)]}}
        )
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge()
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return ValidationFailed(str(exc), details={"fields": {"body": [str(exc)]}})
    if isinstance(exc, Http404):
        return NotFound()
    if isinstance(exc, DjangoPermissionDenied):
        return Forbidden()
    for klass, status, code in _DRF_CODES:
        if isinstance(exc, klass):
            error = DomainError(str(exc.detail))
            error.status, error.code = status, code
            wait = getattr(exc, "wait", None)
            error.headers = {"Retry-After": str(max(1, math.ceil(wait)))} if wait is not None else {}
            return error
    if isinstance(exc, OperationalError) and isinstance(exc.__cause__, pg_errors.LockNotAvailable):
        return Busy()
    if isinstance(exc, DatabaseError) and isinstance(exc.__cause__, pg_errors.QueryCanceled):
        return Busy()
    if isinstance(exc, DatabaseError) and _stale_prepared_statement(exc.__cause__):
        logger.warning("a prepared statement outlived a schema change; reconnecting: %s", exc)
        connection.close()  # its prepared statements go with it (in a transaction: once that has rolled back)
        return SchemaChanged()
    if isinstance(exc, DataError):
        # Input the validation let through and the database refused (a value out of a column's range):
        # still the client's 400, but logged, because a serializer should have caught it.
        logger.warning("unvalidated input refused by the database: %s", exc)
        return ValidationFailed("A value is out of the range the database can store.")
    if isinstance(exc, OperationalError):
        logger.warning("database unavailable: %s", exc)
        return ServiceUnavailable()
    return None


def _stale_prepared_statement(cause: BaseException | None) -> bool:
    """PostgreSQL refused a statement prepared before a migration: one whose result columns changed type
    ("cached plan must not change result type"), or one a DEALLOCATE dropped under psycopg."""
    if isinstance(cause, pg_errors.InvalidSqlStatementName):
        return True
    return isinstance(cause, pg_errors.FeatureNotSupported) and "cached plan must not change result type" in str(cause)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every expected error becomes the one envelope; the rest stay 500s."""
    error = to_domain_error(exc)
    if error is None:
        return drf_exception_handler(exc, context)  # None: DRF re-raises, Django logs a 500
    if error.status == 409:
        CONFLICTS.labels(error.code).inc()
    response = Response(envelope(error.code, error.message, error.details), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    if error.status == 401:
        response["WWW-Authenticate"] = 'Token realm="api"'
    return response


# --- Django's own error pages answer in the envelope under /api/ ----------------------------------


def _api_error(error: DomainError) -> JsonResponse:
    return JsonResponse(envelope(error.code, error.message, error.details), status=error.status)


def bad_request(request, exception=None):
    """handler400: a body Django refused before any view ran (too large, too many fields)."""
    if is_api(request):
        error = to_domain_error(exception) if exception else None
        return _api_error(error or ValidationFailed("The request was malformed."))
    from django.views.defaults import bad_request as default

    return default(request, exception)


@csrf_exempt  # a path no view matches answers 404 whatever the method, never a CSRF page
def page_not_found(request, exception=None):
    if is_api(request):
        return JsonResponse(envelope("not_found", f"No such endpoint: {request.path}"), status=404)
    from django.views.defaults import page_not_found as default

    return default(request, exception)


def server_error(request):
    if is_api(request):
        return JsonResponse(envelope("internal_error", "An unexpected error occurred; it has been logged."), status=500)
    from django.views.defaults import server_error as default

    return default(request)
