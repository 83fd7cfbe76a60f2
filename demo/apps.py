from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo data set (``manage.py seed_demo``, which ``make run`` loads once): it uses every domain's
    services, so it stands above them all and nothing imports it."""

    name = "demo"
    verbose_name = "Demo data"
