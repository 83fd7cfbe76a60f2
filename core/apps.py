from django.apps import AppConfig
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate


class BookingSiteConfig(AppConfig):
    name = "core"
    label = "booking_site"
    verbose_name = "Platform"

    def ready(self) -> None:
        from core.statements import keep_prepared_statements

        post_migrate.connect(ensure_beat_schedule, sender=self)
        connection_created.connect(keep_prepared_statements)


def ensure_beat_schedule(**kwargs) -> None:
    """Give a fresh install its periodic tasks (docs/contract.md §7). Existing entries are left as operators set
    them in the admin: only missing ones are created."""
    from django.conf import settings
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    using = kwargs.get("using", "default")
    for task, seconds in settings.BEAT_SCHEDULE_SECONDS.items():
        interval, _ = IntervalSchedule.objects.using(using).get_or_create(
            every=seconds, period=IntervalSchedule.SECONDS
        )
        PeriodicTask.objects.using(using).get_or_create(
            name=task.rsplit(".", 1)[-1].replace("_", " "), defaults={"task": task, "interval": interval}
        )
