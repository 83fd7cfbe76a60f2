"""An endpoint pointing at the real receiver of tests/conftest.py."""

import pytest
from django.utils import timezone

from tests.factories import house
from web.webhooks import services


@pytest.fixture
def endpoint(receiver, db):
    return services.webhook_endpoint_create(
        organisation_id=house().pk, url=receiver.url, description="test receiver", now=timezone.now()
    )
