from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "booking_site.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from booking_site.metrics import DATABASE_GAUGES
        from booking_site.webhooks.metrics import WebhookCollector

        DATABASE_GAUGES.register(WebhookCollector())
