"""Idempotency-Key (docs/contract.md §3.4, docs/decisions/0003-idempotency.md): one mechanism every
mutating endpoint gets by declaring it.

    class ReservationConfirm(APIView):
        @idempotent
        def post(self, request, pk): ...

A keyed request is one transaction, and nothing of the key exists outside it:

1. its first statement takes ``pg_try_advisory_xact_lock`` on a hash of (caller, key) and looks up the
   stored record: a record answers (a replay, or 422 for another request); a lock someone else holds
   means the first request is still in flight (409 ``request_in_progress``, at once: never a wait);
2. the handler runs in the same transaction, unless the lookup answered: a gate after the lookup
   (``_GATE_SQL``) stops the statements behind it;
3. its response is inserted as the record, and COMMIT sent in the same round trip.

A rollback — a failed COMMIT included, or a process that died — leaves no record and releases the
lock, so a retry simply runs. The lock is only a busy signal (two keys may share a hash: a spurious
409); the unique constraint ``idempotency_one_record_per_caller_key`` is the truth, and a violation
there is a concurrent duplicate (409). 5xx, 429 and 409 ``request_in_progress`` are never stored.

Round trips (docs/decisions/0003): BEGIN, the lookup and its gate ride in front of the handler's first
statement (``_RideAlong``, psycopg's pipeline mode), and the record's INSERT and COMMIT after its last:
a handler in a transaction of its own pays nothing more for a key, a one-statement car hold one more (2);
a replay, a 422 or a 409 is two (the pipeline, ROLLBACK). Under the keyed transaction the handler's own
``transaction.atomic()`` becomes a savepoint; its savepoint statements (``SAVEPOINT``, ``RELEASE``,
``ROLLBACK TO``) ride with the next statement too: the same statements in the same order, fewer round
trips.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
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

# One row whatever is stored: the lock is taken exactly once (in ``l``), and the record (if any) read from the
# statement's snapshot; ``live`` (a response stored within the TTL) is the one definition of a record that
# answers. The statement also leaves its verdict in the transaction (``set_config``: ``run`` or ``answer``),
# for ``_GATE_SQL``. Composed once (so prepared); its text is what the race controls rewrite.
_VERDICT = "booking_site.idempotency"
_RECORD = functools.partial(column, IdempotencyRecord, alias="r")
_LIVE = sql.SQL("{} IS NOT NULL AND {} >= %(cutoff)s").format(_RECORD("response_status"), _RECORD("created_at"))
_LOOKUP_SQL = (
    sql.SQL(
        "SELECT l.locked, {}, {} AS live, "
        "set_config({}, CASE WHEN l.locked AND NOT COALESCE({}, false) THEN 'run' ELSE 'answer' END, true) "
        "FROM (SELECT pg_try_advisory_xact_lock(%(lock)s) AS locked) AS l LEFT JOIN {} AS r ON {} = {} AND {} = {}"
    )
    .format(
        sql.SQL(", ").join(
            _RECORD(name) for name in ("id", "fingerprint", "response_status", "response_body", "created_at")
        ),
        _LIVE,
        sql.Literal(_VERDICT),
        _LIVE,
        table(IdempotencyRecord),
        _RECORD("user"),
        P("user"),
        _RECORD("key"),
        P("key"),
    )
    .as_string(None)
)
# What stops the handler's statements that ride behind the lookup when its verdict is ``answer``: an error,
# which in a pipeline skips every statement after it up to the Sync (and leaves the transaction to roll back).
GATE_SQLSTATE = "BSIK1"
_GATE_SQL = (
    sql.SQL(
        "DO $$BEGIN IF current_setting({}) <> 'run' THEN "
        "RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = 'the Idempotency-Key answers this request'; END IF; END$$"
    )
    .format(sql.Literal(_VERDICT), sql.Literal(GATE_SQLSTATE))
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
# A record past its TTL (or a claim left by the first design, with no response): the key is free again,
# and ours is inserted in its place before COMMIT.
_DELETE_SQL = (
    sql.SQL("DELETE FROM {} WHERE {} = %(id)s")
    .format(table(IdempotencyRecord), column(IdempotencyRecord, "id"))
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
        answered: _Answered | None = None
        with transaction.atomic():
            keyed = _RideAlong(request.user.pk, key, fingerprint, begin=outermost)
            try:
                with keyed:
                    started_at = timezone.now()
                    try:
                        response = handler(view, request, *args, **kwargs)
                    except _Answered:
                        raise
                    except Exception as exc:
                        response = view.handle_exception(exc)  # re-raises what is not an expected error
                    if transaction.get_rollback():
                        return response  # the transaction is lost: nothing is stored, the retry runs
                    if _storable(response):
                        _store(request, keyed, key, fingerprint, response, started_at, commit=outermost)
                    else:
                        keyed.flush()
            except _Answered as answer:
                answered = answer
                transaction.set_rollback(True)  # the gate aborted the transaction: the handler's writes go
        if answered is None:
            return response
        connection.errors_occurred = False  # the gate's error, answered; the ROLLBACK left the connection sound
        if answered.error is not None:
            raise answered.error
        return answered.response

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


def _store(request, keyed: _RideAlong, key, fingerprint, response, started_at, *, commit: bool) -> None:
    """Insert the record of ``response`` (after what rides along) and, when this is the outermost
    transaction, COMMIT in the same message. A unique violation is a duplicate that got in between the
    lookup's snapshot and its lock: 409, and this transaction rolls back."""
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
        keyed.send([(_INSERT_SQL, params), *(["COMMIT"] if commit else [])])
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


class _Answered(Exception):
    """The key's lookup answered this request (a replay, ``idempotency_key_reused`` or
    ``request_in_progress``): raised where the gate stopped the statements behind it, caught by
    ``idempotent``, which rolls the transaction back and answers."""

    def __init__(self, *, response: Response | None = None, error: Exception | None = None):
        super().__init__()
        self.response, self.error = response, error


_Statement = str | tuple[str, Mapping[str, Any]]


class _RideAlong:
    """An execute wrapper for the handler of a keyed request: what the key costs rides along with the
    handler's own statements (docs/decisions/0003-idempotency.md, "Round trips").

    Held back and sent in front of the handler's first statement, in one round trip (psycopg's pipeline
    mode: statements are bound server side, so each is its own Parse/Bind/Execute and one Sync ends them
    all): BEGIN (when this is the outermost transaction), the key's lookup (its advisory lock and record,
    ``_LOOKUP_SQL``) and its gate (``_GATE_SQL``). When the lookup's verdict is to answer from the key, the
    gate's error skips the handler's statement behind it, and ``_Answered`` stops the handler; the
    transaction rolls back. So a keyed car hold is BEGIN + lookup + gate + the hold's statement, then the
    record's INSERT + COMMIT: two round trips.

    The handler's savepoint statements (``SAVEPOINT``, ``RELEASE SAVEPOINT``, ``ROLLBACK TO SAVEPOINT``:
    its ``transaction.atomic()`` is a savepoint here) return nothing anyone reads, so they are held back
    too and sent in front of the next statement. Which statements run, and in what order, does not
    change; only how many round trips carry them. What is still pending when the handler is done goes in
    front of the record's INSERT (``send``) or alone (``flush``); if the transaction is rolled back
    instead, it is moot."""

    SAVEPOINTS = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")

    def __init__(self, user_id: int, key: str, fingerprint: str, *, begin: bool):
        self.fingerprint = fingerprint
        lookup = {
            "lock": Int8(lock_id(user_id, key)),
            "user": Int8(user_id),
            "key": key,
            "cutoff": timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS),
        }
        self.lookup: _Statement = (_LOOKUP_SQL, lookup)
        self.pending: list[_Statement] = [*(["BEGIN"] if begin else []), self.lookup, _GATE_SQL]
        self._wrapper = connection.execute_wrapper(self)

    def __enter__(self):
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._wrapper.__exit__(*exc_info)

    def __call__(self, execute, sql_text, params, many, context):
        if not many and params is None and sql_text.startswith(self.SAVEPOINTS):
            self.pending.append(sql_text)
            return None
        if not self.pending:
            return execute(sql_text, params, many, context)
        if many or isinstance(context["cursor"].cursor, ServerCursor):  # nothing can go in front of these
            self.flush()
            return execute(sql_text, params, many, context)
        return self.send(then=lambda: execute(sql_text, params, many, context))

    def flush(self) -> None:
        if self.pending:
            self.send()

    def send(self, statements: Sequence[_Statement] = (), *, then=None):
        """Send what is pending, then ``statements``, then ``then()`` (the handler's statement, through
        Django's cursor) in one round trip; returns what ``then`` returns. Raises ``_Answered`` when the
        lookup, sent now, answers the request."""
        before, self.pending = [*self.pending, *statements], []
        raw = connection.connection
        begin = bool(before) and before[0] == "BEGIN"
        lookup: Any = None
        prepared_before_the_gate: set | None = None
        try:
            with connection.wrap_database_errors, _ours_begins(raw, begin), raw.pipeline():
                with raw.cursor() as cursor:
                    for statement in before:
                        text, values = statement if isinstance(statement, tuple) else (statement, None)
                        if statement is self.lookup:
                            lookup = raw.cursor()
                            lookup.execute(text, values)
                        else:
                            cursor.execute(text, values)
                        if text == _GATE_SQL:
                            prepared_before_the_gate = set(raw._prepared._names)
                result = then() if then is not None else None
        except Exception:
            if lookup is None:
                raise
            try:
                self._judge(lookup)  # the gate's error, when it stopped the rest: raises _Answered
            except _Answered:
                _forget_unprepared(raw, prepared_before_the_gate)
                raise
            raise
        if lookup is not None:
            self._judge(lookup)
        return result

    def _judge(self, lookup) -> None:
        """Read the lookup's row: raise ``_Answered`` when its verdict was to answer; otherwise (the handler
        runs) queue the deletion of a record past its TTL, if any."""
        row = lookup.fetchone()
        lookup.close()
        locked, record_id, stored_fingerprint, status, body, _created_at, live, verdict = row
        if verdict == "run":
            if record_id is not None:
                self.pending.append((_DELETE_SQL, {"id": Int8(record_id)}))
            return
        if live:
            if stored_fingerprint != self.fingerprint:
                raise _Answered(error=IdempotencyKeyReused())
            # A raw column has no expression (the stubs want one): JSONField only asks whether it is a KeyTransform.
            field = IdempotencyRecord._meta.get_field("response_body")
            body = field.from_db_value(body, None, connection)  # type: ignore[arg-type]  # no expression, see above
            raise _Answered(response=Response(body, status=status, headers={REPLAY_HEADER: "true"}))
        assert not locked  # the verdict is to answer: a live record, or the first request still in flight
        raise _Answered(error=RequestInProgress())


def _forget_unprepared(raw, known: set | None) -> None:
    """The statements behind a gate that stopped them never ran: their Parse was skipped too. In pipeline
    mode psycopg records a statement it prepares there as prepared before it hears back, and does not
    take that back when the pipeline aborts (outside a pipeline, and on a ROLLBACK, which
    ``core.statements.keep_prepared_statements`` keeps from clearing the cache, it would). So the names it
    learned behind the gate are forgotten here: such a statement is prepared again on a later run, instead
    of being sent as a name the server never heard of. (psycopg 3.3's ``_prepared._names``.)"""
    if known is None:
        return
    names = raw._prepared._names
    for key in [key for key in names if key not in known]:
        del names[key]


@contextmanager
def _ours_begins(raw, begin: bool):
    """Outside autocommit psycopg sends BEGIN itself before the first statement of a transaction, and in
    pipeline mode a Sync after it: a round trip of its own. When ``begin``, our BEGIN rides in the pipeline
    instead: psycopg is told it is in autocommit while the pipeline is queued, and the server's answer
    to the Sync then says a transaction is open, as psycopg's own BEGIN would have left it. (psycopg 3.3's
    ``_autocommit``, read by ``_start_query``; ``tests/reservations/test_round_trips.py`` fails if that
    changes: BEGIN would be sent twice, a round trip more.)"""
    if not begin:
        yield
        return
    raw._autocommit = True
    try:
        yield
    finally:
        raw._autocommit = False
