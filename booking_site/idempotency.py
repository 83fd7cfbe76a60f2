"""Idempotency-Key (SPEC 3.4): one mechanism every mutating endpoint gets by declaring it.

    class ReservationConfirm(APIView):
        @idempotent
        def post(self, request, pk): ...

The first request with a (caller, key) claims a row under the unique constraint
``idempotency_one_record_per_caller_key``; its response is stored in the same transaction as the
changes the handler made, so a replay never disagrees with the database. A duplicate that arrives
while the first is in flight gets 409 ``request_in_progress``; the same key with another body gets
422. 5xx, 409 ``request_in_progress`` and 429 are not stored: the claim is dropped and a retry runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework.response import Response

from booking_site.errors import IdempotencyKeyReused, RequestInProgress, ValidationFailed
from booking_site.models import IdempotencyRecord

HEADER = "Idempotency-Key"
BODY_ALIAS = "requestId"
REPLAY_HEADER = "Idempotent-Replayed"
VALID_KEY = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]{1,255}")  # no control characters, no lone surrogates


def idempotent(handler):
    """Decorate a DRF view method (post/put/patch/delete) to honour Idempotency-Key."""

    @functools.wraps(handler)
    def wrapper(view, request, *args, **kwargs):
        key = request_key(request)
        request.idempotency_key = key
        if key is None or not request.user.is_authenticated:
            return handler(view, request, *args, **kwargs)

        record = _claim(request, key)
        if record.response_status is not None:
            return Response(record.response_body, status=record.response_status, headers={REPLAY_HEADER: "true"})

        stored = False
        try:
            with transaction.atomic():
                try:
                    response = handler(view, request, *args, **kwargs)
                except Exception as exc:
                    response = view.handle_exception(exc)  # re-raises what is not an expected error
                if _storable(response) and not transaction.get_rollback():
                    IdempotencyRecord.objects.filter(pk=record.pk).update(
                        response_status=response.status_code,
                        response_body=response.data,
                        completed_at=timezone.now(),
                    )
                    stored = True
        finally:
            if not stored:
                IdempotencyRecord.objects.filter(pk=record.pk).delete()
        return response

    return wrapper


def request_key(request) -> str | None:
    """The key from the header, or the seeds' ``requestId`` body field; both given must agree."""
    header = request.headers.get(HEADER)
    body = request.data.get(BODY_ALIAS) if isinstance(request.data, dict) else None
    if body is not None and not (isinstance(body, str) and VALID_KEY.fullmatch(body)):
        raise ValidationFailed.for_field(BODY_ALIAS, "Must be 1 to 255 printable characters.")
    if header is not None and not VALID_KEY.fullmatch(header):
        raise ValidationFailed.for_field(HEADER, "Must be 1 to 255 printable characters.")
    if header is not None and body is not None and header != body:
        raise ValidationFailed.for_field(BODY_ALIAS, f"Differs from the {HEADER} header.")
    return header if header is not None else body


def _fingerprint(request) -> str:
    body = json.dumps(request.data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(f"{request.method}\n{request.path}\n{body}".encode()).hexdigest()


def _claim(request, key: str) -> IdempotencyRecord:
    """Claim (caller, key) or return its finished record; raise when another request holds it."""
    now = timezone.now()
    fingerprint = _fingerprint(request)
    fields = {"fingerprint": fingerprint, "method": request.method, "path": request.path[:512]}
    record, created = IdempotencyRecord.objects.get_or_create(
        user=request.user, key=key, defaults={**fields, "created_at": now}
    )
    if created:
        return record
    ttl = timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    stale = timedelta(seconds=settings.IDEMPOTENCY_STALE_SECONDS)
    finished = record.response_status is not None
    if (finished and record.created_at < now - ttl) or (not finished and record.created_at < now - stale):
        # Past its TTL, or abandoned by a process that died: take it over, unless someone else just did.
        taken = IdempotencyRecord.objects.filter(pk=record.pk, created_at=record.created_at).update(
            **fields, created_at=now, response_status=None, response_body=None, completed_at=None
        )
        if not taken:
            raise RequestInProgress()
        record.refresh_from_db()
        return record
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    if not finished:
        raise RequestInProgress()
    return record


def _storable(response) -> bool:
    if response.status_code >= 500 or response.status_code == 429:
        return False
    error = response.data.get("error") if isinstance(response.data, dict) else None
    return not (error and error.get("code") == RequestInProgress.code)


def idempotency_prune(*, now) -> int:
    """Delete records past their TTL. Returns how many were deleted."""
    cutoff = now - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
