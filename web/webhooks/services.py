"""Every write of webhooks (docs/contract.md §3.7, docs/decisions/0013-webhooks.md): endpoints, and the
job that delivers the audit trail to them.

The job has two steps, each safe to run twice at once:

1. *fan out*: the audit events not yet handed on (``delivered_at`` null, the outbox) become one
   ``WebhookDelivery`` per endpoint that wants them, and are marked handed on, in one statement per
   batch. One job at a time does it (a transaction-level advisory lock; a second job skips the step):
   two fan-outs at once could hand a subject's later event on before its earlier one.
2. *send*: take one due delivery — the oldest PENDING of its (endpoint, subject), so a subject's
   events go in order and other subjects never wait for it — by moving its ``next_attempt_at`` past
   the attempt's longest duration (the lease) in one autocommitted statement with ``SKIP LOCKED``;
   POST it with no transaction open; record the outcome. A second job skips the leased row; a worker
   killed mid-POST lets the lease run out and the delivery comes due again: at least once.
"""

from __future__ import annotations

import base64
import functools
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from psycopg import sql
from standardwebhooks import Webhook

from core.audit.models import AuditEvent
from core.errors import NotFound, ValidationFailed
from core.organisations import access
from core.organisations.roles import Role
from web.accounts.models import User
from web.webhooks import catalogue, kick, organisations, sender
from web.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

PENDING, DELIVERED, FAILED = (
    WebhookDelivery.Status.PENDING,
    WebhookDelivery.Status.DELIVERED,
    WebhookDelivery.Status.FAILED,
)
SECRET_PREFIX = "whsec_"
PREVIOUS_SECRET_GRACE = timedelta(hours=24)  # the old secret keeps signing this long after a rotation
FAN_OUT_BATCH = 500
FAN_OUT_LOCK = 0x77686F6F6B73  # the advisory lock of the fan-out step ("whooks")


# --- endpoints ------------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is not a Standard Webhooks secret ("whsec_" + base64 of 24 to 64 bytes), or None."""
    if not secret.startswith(SECRET_PREFIX):
        return f'Must start with "{SECRET_PREFIX}".'
    try:
        encoded = secret[len(SECRET_PREFIX) :]
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)  # padding optional
    except ValueError:
        return f'Must be "{SECRET_PREFIX}" followed by base64.'
    if not 24 <= len(key) <= 64:
        return "The key must be 24 to 64 bytes."
    return None


def webhook_endpoint_validate(
    *, url: str | None = None, event_types: list[str] | None = None, secret: str | None = None
) -> None:
    """Raise ValidationFailed (per API field) for a URL, event types or secret an endpoint may not have."""
    if url is not None and (problem := sender.url_problem(url)):
        raise ValidationFailed.for_field("url", problem[0].upper() + problem[1:] + ".")
    unknown = sorted(set(event_types or []) - set(catalogue.EVENT_TYPES))
    if unknown:
        raise ValidationFailed.for_field("eventTypes", f"Unknown event types: {', '.join(unknown)}.")
    if secret is not None and (problem := secret_problem(secret)):
        raise ValidationFailed.for_field("secret", problem)


@transaction.atomic
def webhook_endpoint_create(
    *,
    organisation_id: int,
    url: str,
    description: str = "",
    event_types: list[str] | None = None,
    secret: str | None = None,
    actor: User | None = None,
    now: datetime,
) -> WebhookEndpoint:
    """An endpoint of ``organisation_id`` (``actor`` an owner there): it receives that organisation's events."""
    webhook_endpoint_validate(url=url, event_types=event_types, secret=secret)
    access.require_member(actor, organisation_id, Role.OWNER, what=f"Organisation {organisation_id}")
    endpoint = WebhookEndpoint.objects.create(
        organisation_id=organisation_id,
        url=url,
        description=description,
        event_types=sorted(set(event_types or [])),
        secret=secret or new_secret(),
        created_at=now,
        updated_at=now,
    )
    kick.endpoints_changed()
    return endpoint


def webhook_endpoint_update(
    *, endpoint_id: int, changes: dict, now: datetime, actor: User | None = None
) -> WebhookEndpoint:
    """Change ``url``, ``description``, ``event_types`` or ``active``. Turning an endpoint back on clears
    what disabled it."""
    webhook_endpoint_validate(url=changes.get("url"), event_types=changes.get("event_types"))
    with transaction.atomic():
        endpoint = _locked(endpoint_id, actor)
        for field, value in changes.items():
            setattr(endpoint, field, sorted(set(value)) if field == "event_types" else value)
        if changes.get("active"):
            endpoint.failing_since, endpoint.disabled_reason = None, ""
        endpoint.updated_at = now
        endpoint.save()
    kick.endpoints_changed()
    return endpoint


def webhook_endpoint_delete(*, endpoint_id: int, actor: User | None = None) -> None:
    """Delete the endpoint and its deliveries (their audit events stay)."""
    with transaction.atomic():
        _locked(endpoint_id, actor).delete()
    kick.endpoints_changed()


def webhook_endpoint_rotate_secret(*, endpoint_id: int, now: datetime, actor: User | None = None) -> WebhookEndpoint:
    """A new secret signs from now on; the current one signs too (a second signature) for 24 h."""
    with transaction.atomic():
        endpoint = _locked(endpoint_id, actor)
        endpoint.previous_secret, endpoint.previous_secret_expires_at = endpoint.secret, now + PREVIOUS_SECRET_GRACE
        endpoint.secret, endpoint.updated_at = new_secret(), now
        endpoint.save(update_fields=["previous_secret", "previous_secret_expires_at", "secret", "updated_at"])
    return endpoint


def webhook_endpoint_of(endpoint_id: int, actor: User | None) -> WebhookEndpoint:
    """The endpoint, for ``actor``, an owner of its organisation (404 to anyone else; None: the system)."""
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        raise NotFound(f"Webhook {endpoint_id} does not exist.")
    if actor is not None:
        access.require(actor, endpoint.organisation_id, Role.OWNER, what=f"Webhook {endpoint_id}")
    return endpoint


def webhook_endpoints_of(actor: User) -> QuerySet[WebhookEndpoint]:
    """The endpoints ``actor`` may see: those of the organisations they own (a superuser: all)."""
    endpoints = WebhookEndpoint.objects.order_by("id")
    if actor.is_superuser:
        return endpoints
    return endpoints.filter(organisation_id__in=access.organisation_ids(actor, Role.OWNER))


def _locked(endpoint_id: int, actor: User | None) -> WebhookEndpoint:
    """The endpoint, locked, for ``actor``, an owner of its organisation (404 to anyone else)."""
    endpoint = WebhookEndpoint.objects.select_for_update().filter(pk=endpoint_id).first()
    if endpoint is None:
        raise NotFound(f"Webhook {endpoint_id} does not exist.")
    access.require_member(actor, endpoint.organisation_id, Role.OWNER, what=f"Webhook {endpoint_id}")
    return endpoint


# --- the job --------------------------------------------------------------------------------------


@dataclass
class Run:
    fanned_out: int = 0  # audit events handed on
    delivered: int = 0
    retrying: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def webhooks_deliver(*, now: datetime | None = None, limit: int | None = None) -> Run:
    """The audit-event job: fan the outbox out, then send what is due (at most ``limit`` attempts,
    WEBHOOK_MAX_ATTEMPTS_PER_RUN by default) until nothing is. ``now`` (the clock by default) is when
    deliveries count as due; the attempts are timed by the clock."""
    run = Run()
    run.fanned_out = webhook_events_fan_out(now=now or _now())
    for _ in range(limit or settings.WEBHOOK_MAX_ATTEMPTS_PER_RUN):
        delivery = webhook_delivery_take(now=now or _now())
        if delivery is None:
            break
        status = webhook_delivery_attempt(delivery).status
        if status == DELIVERED:
            run.delivered += 1
        elif status == FAILED:
            run.failed += 1
        else:
            run.retrying += 1
    return run


def _now() -> datetime:
    return datetime.now(UTC)


_TABLES = {
    "audit": AuditEvent._meta.db_table,
    "delivery": WebhookDelivery._meta.db_table,
    "endpoint": WebhookEndpoint._meta.db_table,
}
_EVENT_TYPE_SQL = (
    "CASE b.subject_type "
    + " ".join(f"WHEN '{stored}' THEN '{named}'" for stored, named in catalogue.SUBJECTS.items() if stored != named)
    + " ELSE b.subject_type END || '.' || lower(b.event_type)"
)


@functools.cache
def _fan_out_sql() -> str:
    """The fan-out's statement, composed on first use (the domains register their subjects' organisations in
    their ``ready()``): each event goes to the active endpoints of its organisation that want its type."""
    organisation = organisations.organisation_sql(sql.SQL("b.subject_type"), sql.SQL("b.subject_id")).as_string(None)
    return f"""
WITH batch AS (
    SELECT id, subject_type, subject_id, event_type FROM {_TABLES["audit"]}
    WHERE delivered_at IS NULL ORDER BY id LIMIT %(batch)s FOR NO KEY UPDATE SKIP LOCKED
), typed AS (
    SELECT b.*, {_EVENT_TYPE_SQL} AS type, {organisation} AS organisation FROM batch b
), fanned AS (
    INSERT INTO {_TABLES["delivery"]} (endpoint_id, event_id, event_type, subject_type, subject_id, status, attempts,
                                       next_attempt_at, last_error, created_at)
    SELECT e.id, t.id, t.type, t.subject_type, t.subject_id, 'PENDING', 0, %(now)s, '', %(now)s
    FROM typed t JOIN {_TABLES["endpoint"]} e ON e.active AND e.organisation_id = t.organisation
                                                AND (e.event_types = '{{}}' OR t.type = ANY (e.event_types))
    ORDER BY t.id, e.id
    ON CONFLICT (endpoint_id, event_id) WHERE event_id IS NOT NULL DO NOTHING
)
UPDATE {_TABLES["audit"]} a SET delivered_at = %(now)s FROM batch WHERE a.id = batch.id
"""


def webhook_events_fan_out(*, now: datetime) -> int:
    """Hand every audit event not yet handed on to the endpoints that want it (docs/contract.md §3.7).
    Returns how many events; 0 at once when another job is doing it."""
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [FAN_OUT_LOCK])
            if not cursor.fetchone()[0]:
                return total
            cursor.execute(_fan_out_sql(), {"batch": FAN_OUT_BATCH, "now": now})
            handed = cursor.rowcount
        total += handed
        if handed < FAN_OUT_BATCH:
            return total


# The oldest due delivery whose (endpoint, subject) has no earlier event PENDING, leased in one
# statement. FOR UPDATE re-reads a row another job changed meanwhile, and its new lease no longer matches.
TAKE_SQL = f"""
UPDATE {_TABLES["delivery"]} d SET next_attempt_at = %(lease)s, attempts = d.attempts + 1
WHERE d.id = (
    SELECT c.id FROM {_TABLES["delivery"]} c JOIN {_TABLES["endpoint"]} e ON e.id = c.endpoint_id AND e.active
    WHERE c.status = 'PENDING' AND c.next_attempt_at <= %(now)s
      AND NOT EXISTS (
          SELECT FROM {_TABLES["delivery"]} p
          WHERE p.endpoint_id = c.endpoint_id AND p.subject_type = c.subject_type AND p.subject_id = c.subject_id
            AND p.status = 'PENDING' AND p.event_id < c.event_id
      )
    ORDER BY c.next_attempt_at, c.id
    LIMIT 1
    FOR UPDATE OF c SKIP LOCKED
)
RETURNING d.id
"""


def lease() -> timedelta:
    """How long a taken delivery is left to its job: the longest an attempt can take (a connect and a
    read, each up to the timeout) and a margin. After that it is due again."""
    return timedelta(seconds=2 * settings.WEBHOOK_TIMEOUT_SECONDS + 30)


def webhook_delivery_take(*, now: datetime) -> WebhookDelivery | None:
    """Lease the next due delivery (autocommitted: the lease is visible to every other job at once)."""
    with connection.cursor() as cursor:
        cursor.execute(TAKE_SQL, {"now": now, "lease": _now() + lease()})
        row = cursor.fetchone()
    if row is None:
        return None
    return WebhookDelivery.objects.select_related("endpoint", "event").get(pk=row[0])


def webhook_delivery_attempt(delivery: WebhookDelivery) -> WebhookDelivery:
    """POST a leased delivery once (no transaction open) and record the outcome."""
    endpoint = delivery.endpoint
    sent_at = _now()
    if delivery.event is not None:
        body = catalogue.event_body(delivery.event)
    else:
        body = catalogue.test_body(endpoint_id=endpoint.pk, created_at=delivery.created_at)
    outcome = sender.post(
        endpoint.url,
        body.encode(),
        signed_headers(endpoint, message_id=delivery.message_id, sent_at=sent_at, body=body),
        timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
    )
    return webhook_delivery_record(delivery, outcome, attempted_at=sent_at)


def signed_headers(endpoint: WebhookEndpoint, *, message_id: str, sent_at: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers: one ``v1,`` signature per signing secret, space-separated."""
    timestamp = datetime.fromtimestamp(int(sent_at.timestamp()), UTC)
    signatures = [Webhook(s).sign(message_id, timestamp, body) for s in endpoint.signing_secrets(sent_at)]
    return {
        "Content-Type": "application/json",
        "User-Agent": "booking_site-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


def webhook_delivery_record(
    delivery: WebhookDelivery, outcome: sender.Outcome, *, attempted_at: datetime
) -> WebhookDelivery:
    """Record one attempt: DELIVERED on a 2xx; otherwise the next attempt after the next delay of
    WEBHOOK_RETRY_DELAYS (with ±20 % jitter), or FAILED when they are used up. An endpoint failing
    everything for WEBHOOK_DISABLE_AFTER_DAYS is disabled."""
    now = _now()
    delays = settings.WEBHOOK_RETRY_DELAYS
    error = outcome.error or ("" if outcome.ok else f"HTTP {outcome.status_code}")
    if outcome.ok:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = DELIVERED, now, None
    elif delivery.event is None or delivery.attempts > len(delays):  # a test message is sent once
        delivery.status, delivery.next_attempt_at = FAILED, None
    else:
        delay = delays[delivery.attempts - 1] * random.uniform(0.8, 1.2)
        delivery.next_attempt_at = now + timedelta(seconds=delay)
    delivery.last_status_code, delivery.last_error = outcome.status_code, error
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery,
            attempted_at=attempted_at,
            status_code=outcome.status_code,
            duration_ms=outcome.duration_ms,
            error=error,
            response_snippet=outcome.snippet,
        )
        WebhookDelivery.objects.filter(pk=delivery.pk, status=PENDING).update(
            status=delivery.status,
            delivered_at=delivery.delivered_at,
            next_attempt_at=delivery.next_attempt_at,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
        )
        endpoints = WebhookEndpoint.objects.filter(pk=delivery.endpoint_id)
        if outcome.ok:
            endpoints.update(last_success_at=now, failing_since=None)
        else:
            endpoints.update(last_failure_at=now, failing_since=Coalesce(F("failing_since"), now))
            cutoff = now - timedelta(days=settings.WEBHOOK_DISABLE_AFTER_DAYS)
            endpoints.filter(active=True, failing_since__lte=cutoff).update(
                active=False,
                disabled_reason=f"Disabled {now:%Y-%m-%d %H:%M} UTC: every delivery failed for "
                f"{settings.WEBHOOK_DISABLE_AFTER_DAYS} days.",
            )
    return delivery


def webhook_endpoint_send_test(
    *, endpoint_id: int, now: datetime, actor: User | None = None
) -> tuple[WebhookDelivery, WebhookAttempt]:
    """Send a ``webhook.test`` message to the endpoint now, once (active or not); returns the delivery
    and its attempt. It is leased while it is sent, like any delivery, and not retried (an operator's
    "retry now" sends it once more)."""
    endpoint = webhook_endpoint_of(endpoint_id, actor)
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint,
        event_type=catalogue.TEST_EVENT,
        attempts=1,
        next_attempt_at=now + lease(),
        created_at=now,
    )
    delivery = webhook_delivery_attempt(delivery)
    return delivery, delivery.attempt_set.order_by("-id")[0]


def webhook_delivery_retry_now(*, delivery_id: int, now: datetime, actor: User | None = None) -> WebhookDelivery:
    """Make a delivery due now: a PENDING one skips its wait, a FAILED one gets one more attempt. ``actor``: an
    owner of its endpoint's organisation (another organisation's delivery is 404; None: the system)."""
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None:
            raise NotFound(f"Delivery {delivery_id} does not exist.")
        try:  # an owner, their membership confirmed under its lock (ADR 0025, 7)
            endpoint = webhook_endpoint_of(delivery.endpoint_id, actor)
            access.require_member(actor, endpoint.organisation_id, Role.OWNER, what=f"Webhook {endpoint.pk}")
        except NotFound:
            raise NotFound(f"Delivery {delivery_id} does not exist.") from None
        if delivery.status == DELIVERED:
            raise ValidationFailed(f"Delivery {delivery_id} is delivered already.")
        if delivery.status == FAILED:
            delivery.attempts = min(delivery.attempts, len(settings.WEBHOOK_RETRY_DELAYS))
        delivery.status, delivery.next_attempt_at = PENDING, now
        delivery.save(update_fields=["status", "next_attempt_at", "attempts"])
    kick.soon()
    return delivery


def webhook_deliveries_prune(*, now: datetime) -> int:
    """Delete the deliveries (and their attempts) delivered more than WEBHOOK_RETENTION_DAYS ago."""
    cutoff = now - timedelta(days=settings.WEBHOOK_RETENTION_DAYS)
    _, deleted = WebhookDelivery.objects.filter(status=DELIVERED, delivered_at__lt=cutoff).delete()
    return deleted.get(WebhookAttempt._meta.label, 0)
