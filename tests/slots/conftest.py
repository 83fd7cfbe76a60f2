import pytest

from tests.slots.factories import HostFactory


@pytest.fixture
def host(db):
    return HostFactory()


@pytest.fixture
def host_api(client_for, host):
    return client_for(host)
