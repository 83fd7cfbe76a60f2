from django.apps import AppConfig


class WebConfig(AppConfig):
    """The platform's own jobs and commands (``web/tasks.py``, ``manage.py prune``); its models are its apps'
    (``web.accounts``, ``web.webhooks``) and the core's (``IdempotencyRecord``)."""

    name = "web"
    label = "web"
    verbose_name = "Web platform"
