"""Reads about webhook delivery: what /metrics exports."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, Min

from core.audit.models import AuditEvent
from web.webhooks.models import WebhookDelivery


def deliveries_by_status() -> dict[str, int]:
    counts = dict.fromkeys(WebhookDelivery.Status.values, 0)
    for row in WebhookDelivery.objects.values("status").annotate(n=Count("id")).order_by():
        counts[row["status"]] = row["n"]
    return counts


def oldest_undelivered_at() -> datetime | None:
    """When the oldest audit event not yet delivered everywhere it goes occurred: not handed on yet, or
    with a delivery still PENDING. None when there is none."""
    waiting = AuditEvent.objects.filter(delivered_at__isnull=True).order_by("id").values_list("occurred_at")[:1]
    pending = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, event__isnull=False).aggregate(
        oldest=Min("event__occurred_at")
    )["oldest"]
    moments = [m for m in [*(row[0] for row in waiting), pending] if m is not None]
    return min(moments, default=None)
