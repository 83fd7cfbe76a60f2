"""What an audit event is called on the wire, and the body a subscriber receives (docs/contract.md §3.7)."""

from __future__ import annotations

import json
from datetime import datetime

from django.core.serializers.json import DjangoJSONEncoder

from core.audit.models import AuditEvent

TEST_EVENT = "webhook.test"

# The audit trail's subject types (docs/contract.md §3.5) by their name in an event type.
SUBJECTS = {
    "car": "car",
    "reservation": "reservation",
    "event": "event",
    "seat_hold_group": "seat_hold",
    "slot": "slot",
    "slotbooking": "slot_booking",
    "waitlist_entry": "waitlist_entry",
    "queue_entry": "queue_entry",
}

# Every event type a subscriber can receive, by subject: the audit events each subject records.
EVENT_TYPES: list[str] = [
    *(f"car.{e}" for e in ("created", "updated")),
    *(f"reservation.{e}" for e in ("created", "confirmed", "cancelled", "expired")),
    *(f"event.{e}" for e in ("created", "updated", "sales_opened", "sales_closed")),
    *(
        f"seat_hold.{e}"
        for e in ("created", "confirmed", "released", "expired", "cancelled", "seats_cancelled", "reminded")
    ),
    *(f"slot.{e}" for e in ("created", "updated", "cancelled")),
    *(f"slot_booking.{e}" for e in ("created", "confirmed", "cancelled", "expired", "rescheduled", "reminded")),
    *(f"waitlist_entry.{e}" for e in ("created", "offered", "accepted", "expired", "left")),
    *(f"queue_entry.{e}" for e in ("created", "admitted", "expired")),
    TEST_EVENT,
]


def event_type(event: AuditEvent) -> str:
    """``<subject>.<event>`` in lower case: ``reservation.created``, ``seat_hold.expired``."""
    return f"{SUBJECTS.get(event.subject_type, event.subject_type)}.{event.event_type.lower()}"


def event_body(event: AuditEvent) -> str:
    """The JSON body of an audit event's delivery: the same bytes on every attempt."""
    return _dumps(
        {
            "type": event_type(event),
            "timestamp": event.occurred_at,
            "data": {
                "id": event.pk,
                "subject": {"type": SUBJECTS.get(event.subject_type, event.subject_type), "id": event.subject_id},
                "event": event.event_type,
                "fromState": event.from_state or None,
                "toState": event.to_state or None,
                "actor": event.actor_label,
                "requestId": event.request_id or None,
                "occurredAt": event.occurred_at,
                "metadata": event.metadata,
            },
        }
    )


def test_body(*, endpoint_id: int, created_at: datetime) -> str:
    return _dumps(
        {
            "type": TEST_EVENT,
            "timestamp": created_at,
            "data": {"endpointId": endpoint_id, "message": "A test event sent from booking_site."},
        }
    )


def _dumps(body: dict) -> str:
    return json.dumps(body, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False)
