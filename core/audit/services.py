"""``record()``: the one way to write an audit event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from django.contrib.auth import get_user_model
from django.db import connection, models
from django.utils import timezone

from core.audit.models import AuditEvent
from core.middleware import current_request_id

if TYPE_CHECKING:  # the user model, settings.AUTH_USER_MODEL, as django-stubs resolves it: the core imports no app's
    from django.contrib.auth.models import _User as User


@dataclass(frozen=True)
class Subject:
    """What an event is about when it is not one model row (a seat hold group, say)."""

    type: str
    id: Any


Actor: TypeAlias = "User | str | None"  # a user, or the name of a system job ("system:expire_holds")

# An event's columns in the order the statements not yet composed by ``core.statements.audit_rows``
# name them in ``INSERT INTO <AuditEvent table> (…) SELECT …`` (a seat transition's waiting-list entries).
SQL_COLUMNS = (
    "occurred_at, actor_id, actor_label, subject_type, subject_id, event_type, from_state, to_state, metadata, "
    "request_id"
)


def event(
    *,
    subject: models.Model | Subject,
    event: str,
    to_state: str = "",
    from_state: str = "",
    actor: Actor = None,
    metadata: dict | None = None,
) -> AuditEvent:
    """An unsaved event: ``record_many`` writes a batch of them in one insert."""
    subject_type, subject_id = subject_key(subject)
    user = actor if isinstance(actor, get_user_model()) else None
    return AuditEvent(
        occurred_at=timezone.now(),
        actor=user,
        actor_label=f"user:{user.pk}" if user is not None else str(actor or "system"),
        subject_type=subject_type,
        subject_id=subject_id,
        event_type=event,
        from_state=from_state,
        to_state=to_state,
        metadata=metadata or {},
        request_id=current_request_id() or "",
    )


def record(**fields: Any) -> AuditEvent:
    """Append one audit event (arguments as ``event``), inside the transaction of the change."""
    return record_many([event(**fields)])[0]


def record_update(
    obj: models.Model, changes: dict[str, Any], *, actor: Actor, now: datetime | None = None, state_field: str = ""
) -> list[str]:
    """Write the ``changes`` that differ from ``obj`` (caller holds its row lock), with ``updated_at``
    (``now``, or the field's auto_now), and record one UPDATED event: the fields, their values before and
    after, and ``state_field``'s value before and after when the model has one. Returns the changed
    fields; when none changed, nothing is written."""
    changed = [field for field, value in changes.items() if getattr(obj, field) != value]
    if not changed:
        return []
    before = {field: getattr(obj, field) for field in changed}
    from_state = getattr(obj, state_field) if state_field else ""
    written = {field: changes[field] for field in changed}
    if now is not None:
        written["updated_at"] = now
    for field, value in written.items():
        setattr(obj, field, value)
    obj.save(update_fields=[*changed, "updated_at"])
    record(
        subject=obj,
        event="UPDATED",
        from_state=from_state,
        to_state=getattr(obj, state_field) if state_field else "",
        actor=actor,
        metadata={"fields": changed, "from": before, "to": {field: changes[field] for field in changed}},
    )
    return changed


def record_many(events: list[AuditEvent]) -> list[AuditEvent]:
    if not connection.in_atomic_block:
        raise RuntimeError("audit events are written in the transaction of the change they record")
    return AuditEvent.objects.bulk_create(events)


def subject_key(subject: models.Model | Subject) -> tuple[str, str]:
    """(subject_type, subject_id) as stored: a model row is named by its model, a Subject by itself."""
    if isinstance(subject, Subject):
        return subject.type, str(subject.id)
    return cast(str, subject._meta.model_name), str(subject.pk)  # None only for a model not yet registered


def trail(subject: models.Model | Subject):
    """A subject's events, oldest first."""
    subject_type, subject_id = subject_key(subject)
    return AuditEvent.objects.filter(subject_type=subject_type, subject_id=subject_id).order_by("id")
