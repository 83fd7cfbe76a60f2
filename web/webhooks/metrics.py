"""Webhook delivery on /metrics, read from the database at each scrape (so every process says the same):
``booking_webhook_deliveries{status}`` and ``booking_webhook_oldest_undelivered_seconds``."""

from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from web.webhooks import selectors


class WebhookCollector:
    def collect(self):
        by_status = GaugeMetricFamily(
            "booking_webhook_deliveries",
            "Webhook deliveries kept, by status (PENDING, DELIVERED, FAILED)",
            labels=["status"],
        )
        for status, count in selectors.deliveries_by_status().items():
            by_status.add_metric([status], count)
        yield by_status
        oldest = selectors.oldest_undelivered_at()
        yield GaugeMetricFamily(
            "booking_webhook_oldest_undelivered_seconds",
            "Age of the oldest audit event not yet delivered to every endpoint that wants it (0: none)",
            value=(timezone.now() - oldest).total_seconds() if oldest else 0,
        )
