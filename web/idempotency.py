"""Idempotency-Key (docs/contract.md §3.4, docs/decisions/0003-idempotency.md): one mechanism every
mutating endpoint gets by declaring it.

    class ReservationConfirm(APIView):
        @idempotent
        def post(self, request, pk): ...

A keyed request is one transaction, and nothing of the key exists outside it:

1. its first statement takes ``pg_try_advisory_xact_lock`` on a hash of (caller, key) and looks up the
   stored record: a record answers (a replay, or 422 for another request); a lock someone else holds
   means the first request is still in flight (409 ``request_in_progress``, at once: never a wait);
2. the handler runs in the same transaction;
3. its response is inserted as the record, and COMMIT sent in the same round trip.

A rollback — a failed COMMIT included, or a process that died — leaves no record and releases the
lock, so a retry simply runs. The lock is only a busy signal (two keys may share a hash: a spurious
409); the unique constraint ``idempotency_one_record_per_caller_key`` is the truth, and a violation
there is a concurrent duplicate (409). 5xx, 429 and 409 ``request_in_progress`` are never stored.

Round trips (docs/decisions/0003): a key adds one (the lookup) to the handler's own; a replay is three.
Under the keyed transaction the handler's own ``transaction.atomic()`` becomes a savepoint; the
savepoint statements Django sends (``SAVEPOINT``, ``RELEASE``, ``ROLLBACK TO``) are batched with the
next statement (``_SavepointsRideAlong``): the same statements in the same order, fewer round trips.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from psycopg import ServerCursor, sql
from psycopg.types.numeric import Int8
from rest_framework.response import Response

from core.claims import column
from core.errors import IdempotencyKeyReused, RequestInProgress, ValidationFailed
from core.models import IdempotencyRecord
from core.statements import P, table

HEADER = "Idempotency-Key"
BODY_ALIAS = "requestId"
REPLAY_HEADER = "Idempotent-Replayed"
VALID_KEY = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]{1,255}")  # no control characters, no lone surrogates
UNIQUE = "idempotency_one_record_per_caller_key"

# One row whatever is stored: the lock is taken exactly once, and the record (if any) read from the
# statement's snapshot. Composed once (so prepared); its text is what the race controls rewrite.
_LOOKUP_SQL = (
    sql.SQL("SELECT pg_try_advisory_xact_lock(%(lock)s), {} FROM (SELECT) AS one LEFT JOIN {} AS r ON {} = {} AND {}")
    .format(
        sql.SQL(", ").join(
            column(IdempotencyRecord, name, "r")
            for name in ("id", "fingerprint", "response_status", "response_body", "created_at")
        ),
        table(IdempotencyRecord),
        column(IdempotencyRecord, "user", "r"),
        P("user"),
        sql.SQL("{} = {}").format(column(IdempotencyRecord, "key", "r"), P("key")),
    )
    .as_string(None)
)
# The record of a response: every column but the key, each a parameter named by its attname.
_RECORD_FIELDS = [f for f in IdempotencyRecord._meta.concrete_fields if not f.primary_key]
_INSERT_SQL = (
    sql.SQL("INSERT INTO {} ({}) VALUES ({})")
    .format(
        table(IdempotencyRecord),
        sql.SQL(", ").join(column(IdempotencyRecord, f.name) for f in _RECORD_FIELDS),
        sql.SQL(", ").join(P(f.attname) for f in _RECORD_FIELDS),
    )
    .as_string(None)
)


def idempotent(handler):
    """Decorate a DRF view method (post/put/patch/delete) to honour Idempotency-Key."""

    @functools.wraps(handler)
    def wrapper(view, request, *args, **kwargs):
        key = request_key(request)
        request.idempotency_key = key
        if key is None or not request.user.is_authenticated:
            return handler(view, request, *args, **kwargs)

        outermost = not connection.in_atomic_block
        fingerprint = _fingerprint(request)
        with transaction.atomic():
            replay = _lookup(request.user.pk, key, fingerprint)
            if replay is not None:
                return replay
            started_at = timezone.now()
            with _SavepointsRideAlong() as batched:
                try:
                    response = handler(view, request, *args, **kwargs)
                except Exception as exc:
                    response = view.handle_exception(exc)  # re-raises what is not an expected error
            if transaction.get_rollback():
                return response  # the transaction is lost: nothing is stored, the retry runs
            if _storable(response):
                _store(request, key, fingerprint, response, started_at, before=batched.pending, commit=outermost)
            else:
                batched.flush()
        return response

    wrapper.idempotent = True  # type: ignore[attr-defined]  # read by web.api.ApiSchema
    return wrapper


def request_key(request) -> str | None:
    """The key from the header, or the seeds' ``requestId`` body field; both given must agree."""
    header = request.headers.get(HEADER)
    body = body_key(request.data)
    if header is not None and not VALID_KEY.fullmatch(header):
        raise ValidationFailed.for_field(HEADER, "Must be 1 to 255 printable characters.")
    if header is not None and body is not None and header != body:
        raise ValidationFailed.for_field(BODY_ALIAS, f"Differs from the {HEADER} header.")
    return header if header is not None else body


def body_key(data) -> str | None:
    """The ``requestId`` field of a body, if it has one. Where given, it is a key (a 400 otherwise, ``null``
    included), whether or not the endpoint is idempotent: the schema declares it a key on every body."""
    if not isinstance(data, dict) or BODY_ALIAS not in data:
        return None
    value = data[BODY_ALIAS]
    if not (isinstance(value, str) and VALID_KEY.fullmatch(value)):
        raise ValidationFailed.for_field(BODY_ALIAS, "Must be 1 to 255 printable characters.")
    return value


def lock_id(user_id: int, key: str) -> int:
    """The advisory lock of (caller, key): a signed 64-bit hash. Two pairs may share one (then the
    second gets a spurious 409 while the first runs); the unique constraint stays the truth."""
    digest = hashlib.blake2b(f"{user_id}:{key}".encode(), digest_size=8, person=b"idempotency").digest()
    return int.from_bytes(digest, "big", signed=True)


def _fingerprint(request) -> str:
    body = json.dumps(request.data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(f"{request.method}\n{request.path}\n{body}".encode()).hexdigest()


def _lookup(user_id: int, key: str, fingerprint: str) -> Response | None:
    """Take the key's lock and read its record, in one statement. Returns the replay of a stored
    response; None when this request is to run (the lock is held until COMMIT or ROLLBACK)."""
    with connection.cursor() as cursor:
        cursor.execute(_LOOKUP_SQL, {"lock": Int8(lock_id(user_id, key)), "user": Int8(user_id), "key": key})
        locked, record_id, stored_fingerprint, status, body, created_at = cursor.fetchone()
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    if record_id is not None and status is not None and created_at >= cutoff:
        if stored_fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        # A raw column has no expression (the stubs want one): JSONField only asks whether it is a KeyTransform.
        field = IdempotencyRecord._meta.get_field("response_body")
        body = field.from_db_value(body, None, connection)  # type: ignore[arg-type]  # no expression, see above
        return Response(body, status=status, headers={REPLAY_HEADER: "true"})
    if not locked:
        raise RequestInProgress()
    if record_id is not None:
        # Past its TTL (or a claim left by the design before this one, with no response): the key is
        # free again. Ours is inserted in its place before COMMIT.
        IdempotencyRecord.objects.filter(pk=record_id).delete()
    return None


def _store(request, key, fingerprint, response, started_at, *, before: list[str], commit: bool) -> None:
    """Insert the record of ``response`` (after the batched savepoint statements ``before``) and, when
    this is the outermost transaction, COMMIT in the same message. A unique violation is a duplicate
    that got in between the lookup's snapshot and its lock: 409, and this transaction rolls back."""
    record = IdempotencyRecord(
        user=request.user,
        key=key,
        fingerprint=fingerprint,
        method=request.method,
        path=request.path[:512],
        response_status=response.status_code,
        response_body=response.data,
        created_at=started_at,
        completed_at=timezone.now(),
    )
    params = {f.attname: f.get_db_prep_save(getattr(record, f.attname), connection) for f in _RECORD_FIELDS}
    params["user_id"] = Int8(params["user_id"])  # one prepared statement whatever the id's size
    try:
        # Django's own COMMIT at the end of the atomic block then finds the transaction over: a no-op.
        _send_together([*before, (_INSERT_SQL, params), *(["COMMIT"] if commit else [])])
    except IntegrityError as exc:
        if getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None) == UNIQUE:
            raise RequestInProgress() from None
        raise


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


class _SavepointsRideAlong:
    """An execute wrapper for the handler of a keyed request. There, the handler's outermost
    ``transaction.atomic()`` — BEGIN and COMMIT without a key — is a savepoint, which would cost a
    ``SAVEPOINT`` and a ``RELEASE SAVEPOINT`` round trip each. Such statements return nothing anyone
    reads, so they are held back and sent in front of the next statement, in one round trip.
    Which statements run, and in what order, does not change; only how many round trips carry them
    (psycopg's pipeline mode: ``_send_together``).
    What is still pending when the handler is done goes in front of the record's INSERT (or
    ``flush()``); if the transaction is rolled back instead, it is moot."""

    PREFIXES = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")

    def __init__(self):
        self.pending: list[str] = []
        self._wrapper = connection.execute_wrapper(self)

    def __enter__(self):
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._wrapper.__exit__(*exc_info)

    def __call__(self, execute, sql_text, params, many, context):
        if not many and params is None and sql_text.startswith(self.PREFIXES):
            self.pending.append(sql_text)
            return None
        if not self.pending:
            return execute(sql_text, params, many, context)
        cursor = context["cursor"].cursor
        if many or isinstance(cursor, ServerCursor):  # not a statement one can put anything in front of
            self.flush()
            return execute(sql_text, params, many, context)
        before, self.pending = self.pending, []
        with connection.wrap_database_errors, connection.connection.pipeline():
            _queue(before)
            return execute(sql_text, params, many, context)

    def flush(self) -> None:
        if self.pending:
            before, self.pending = self.pending, []
            _send_together(before)


def _send_together(statements: Sequence[str | tuple[str, Mapping[str, Any]]]) -> None:
    """Send ``statements`` (text, or text and parameters) in one round trip: in psycopg's pipeline mode
    (statements are bound server side, so one message cannot carry several: the extended protocol
    sends each as its own Parse/Bind/Execute and one Sync ends them all). Their results are discarded;
    an error is raised as Django's."""
    with connection.wrap_database_errors, connection.connection.pipeline():
        _queue(statements)


def _queue(statements: Sequence[str | tuple[str, Mapping[str, Any]]]) -> None:
    """Queue ``statements`` in the pipeline this is called in."""
    with connection.connection.cursor() as cursor:
        for statement in statements:
            text, params = statement if isinstance(statement, tuple) else (statement, None)
            cursor.execute(text, params)
