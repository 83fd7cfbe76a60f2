from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "web.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from core.metrics import DATABASE_GAUGES
        from web.webhooks.metrics import WebhookCollector

        DATABASE_GAUGES.register(WebhookCollector())
