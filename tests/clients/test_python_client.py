"""A Python client generated from the running server's schema works (docs/decisions/0018-schema-for-clients.md):
openapi-python-client (pinned in requirements-dev.txt) generates it from ``/api/schema/`` without a warning,
every module imports, and a buyer's day goes through it against ``manage.py serve``."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.events.factories import make_event
from tests.reservations.factories import CarFactory
from tests.slots.factories import SlotFactory

PACKAGE = "booking_client"


@pytest.fixture
def generated(served, tmp_path):
    """The client package, generated from the server's schema and importable; forgotten afterwards."""
    config = tmp_path / "config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run over the generated code: only what it generates
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("openapi-python-client")),
            "generate",
            "--url",
            f"{served}/api/schema/",
            "--output-path",
            str(tmp_path / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def modules(package) -> list[str]:
    return [info.name for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]


@pytest.mark.slow
def test_a_buyer_registers_holds_confirms_and_books_through_the_generated_client(generated, served):
    names = modules(generated)
    for name in names:
        importlib.import_module(name)  # users_create once used Unset without importing it: NameError
    api, models = generated.api, generated.models
    assert len([name for name in names if name.startswith(f"{PACKAGE}.models.")]) < 120  # 1,483: one per error
    car, event, slot = CarFactory(), make_event(total_seats=10), SlotFactory()
    anonymous = generated.Client(base_url=served, raise_on_unexpected_status=True)

    registered = api.users.users_create.sync(
        client=anonymous,
        body=models.UserRegisterInRequest(
            email="ada@example.com", name="Ada", roles=[models.RolesEnum.GUEST, models.RolesEnum.HOST]
        ),
    )
    other = api.users.users_create.sync(
        client=anonymous, body=models.UserRegisterInRequest(email="bob@example.com", name="Bob")
    )
    assert isinstance(registered, models.UserWithTokenOut), registered
    assert sorted(registered.roles) == [models.RolesEnum.GUEST, models.RolesEnum.HOST]  # sent once, as JSON
    buyer = generated.AuthenticatedClient(base_url=served, token=registered.token, prefix="Token")
    rival = generated.AuthenticatedClient(base_url=served, token=other.token, prefix="Token")

    held = api.reservations.reservations_create.sync(
        client=buyer, body=models.ReservationCreateInRequest(car_id=car.pk), idempotency_key="ada-car-1"
    )
    assert isinstance(held, models.ReservationOut), held
    confirmed = api.reservations.reservations_confirm_create.sync(client=buyer, reservation_id=held.id)
    assert (held.state, confirmed.state) == ("HELD", "CONFIRMED")

    refused = api.reservations.reservations_create.sync_detailed(
        client=rival, body=models.ReservationCreateInRequest(car_id=car.pk)
    )
    assert refused.status_code == 409
    assert isinstance(refused.parsed, models.Error), refused.parsed
    assert refused.parsed.error.code == "car_unavailable"
    assert refused.parsed.error.message and isinstance(refused.parsed.error.details, models.ErrorBodyDetails)

    seats = api.events.events_seats_reserve_create.sync(
        client=buyer, event_id=event.pk, body=models.SeatHoldInRequest(seat_codes=["S1"])
    )
    assert isinstance(seats, models.SeatHoldOut), seats
    assert seats.seat_codes == ["S1"]  # once: a multipart body sent it twice ("given twice")
    booked = api.events.events_seats_confirm_create.sync(
        client=buyer, event_id=event.pk, body=models.HoldActionInRequest(hold_group_id=seats.hold_group_id)
    )
    assert booked.success and booked.seat_codes == ["S1"]

    booking = api.bookings.bookings_create.sync(client=buyer, body=models.SlotBookingInRequest(slot_id=slot.pk))
    assert isinstance(booking, models.SlotBookingOut), booking
    assert (booking.slot_id, booking.status) == (slot.pk, "CONFIRMED")
