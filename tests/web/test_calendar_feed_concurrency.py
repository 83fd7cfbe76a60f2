"""Two new feed secrets asked for at once (two devices, a double click): both are answered, and exactly
one secret opens the feed afterwards — the upsert is one statement on the user's row."""

import threading

import pytest
from django.db import transaction
from django.utils import timezone

from tests.concurrency import run_concurrently
from tests.factories import UserFactory
from web.accounts import services
from web.accounts.models import CalendarFeed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]


def _race(user, issue) -> list[object]:
    return run_concurrently([lambda: issue(user=user, now=timezone.now()) for _ in range(4)])


def test_secrets_issued_at_once_leave_exactly_one_alive():
    user = UserFactory()

    for _ in range(5):
        secrets = _race(user, services.calendar_feed_issue)

        assert all(isinstance(secret, str) for secret in secrets), secrets
        alive = [secret for secret in secrets if services.calendar_feed_owner(secret) == user]
        assert len(alive) == 1
        assert CalendarFeed.objects.filter(user=user).count() == 1


def test_control_a_read_then_write_issue_is_caught():
    """Without the upsert — "is there a feed? then update it, else insert one", the obvious version —
    two requests that both read "none" both insert, and one fails: the test above would see it."""
    user = UserFactory()
    both_read = threading.Barrier(2)

    def naive_issue(*, user, now):
        with transaction.atomic():
            exists = CalendarFeed.objects.filter(user=user).exists()
            both_read.wait(10)
            secret = f"naive-{threading.get_ident()}"
            row = CalendarFeed(user=user, secret_sha256=services._sha256(secret), created_at=now)
            if exists:
                CalendarFeed.objects.filter(user=user).update(secret_sha256=row.secret_sha256, created_at=now)
            else:
                row.save(force_insert=True)
            return secret

    results = run_concurrently([lambda: naive_issue(user=user, now=timezone.now()) for _ in range(2)])

    assert any(isinstance(result, Exception) for result in results), results
