"""An endpoint pointing at the real receiver of tests/conftest.py."""

import pytest
from django.utils import timezone

from web.webhooks import services


@pytest.fixture
def endpoint(receiver, db):
    return services.webhook_endpoint_create(url=receiver.url, description="test receiver", now=timezone.now())
