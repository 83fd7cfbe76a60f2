from django.contrib.auth.models import AbstractUser
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models.functions import Lower


class Role(models.TextChoices):
    HOST = "HOST", "Host"
    GUEST = "GUEST", "Guest"


class User(AbstractUser):
    """A person using the platform. Staff users are the operators (docs/contract.md §3.3)."""

    email = models.EmailField("email address")
    name = models.CharField(max_length=150, blank=True)
    roles = ArrayField(models.CharField(max_length=8, choices=Role.choices), default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="user_email_unique_ci"),
            models.CheckConstraint(condition=models.Q(roles__contained_by=Role.values), name="user_roles_valid"),
        ]

    def __str__(self) -> str:
        return self.name or self.email or self.username

    @property
    def is_host(self) -> bool:
        return Role.HOST in self.roles


class CalendarFeed(models.Model):
    """A user's private calendar feed (docs/contract.md §3.8): the URL ``/api/calendar/<secret>.ics`` a
    calendar app subscribes to, since it cannot send headers. Only the SHA-256 of the secret is kept, so
    the table alone opens no feed; a new secret replaces the row's hash, and the old URL is dead at once."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, primary_key=True, related_name="calendar_feed")
    secret_sha256 = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"Calendar feed of user #{self.user_id}"
