from datetime import datetime, time, timedelta

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from booking_site.accounts.models import Role, User
from events.models import Event
from events.services import SeatLayout, event_create
from reservations.models import Car
from reservations.services import car_create
from slots.models import Slot
from slots.services import slots_create_many

OPERATOR = ("operator", "operator")  # development only: the demo data is for a local machine
DEMO_BUYER = "buyer@example.com"
DEMO_HOST = "doctor@example.com"
DEMO_CARS = [
    (1, "Volvo", "XC40", "Volvo XC40 Recharge, white"),
    (1, "Tesla", "Model 3", "Tesla Model 3 Long Range, blue"),
    (2, "Toyota", "Corolla", "Toyota Corolla Hybrid, grey"),
    (2, "Ford", "Mustang", "Ford Mustang Mach-E, red"),
]


class Command(BaseCommand):
    help = (
        "Load the small demo data set once: an operator login (operator / operator) for /admin/, a demo "
        "buyer and a demo host (a doctor) with API tokens, a few cars, an event with a 100-seat layout and "
        "a morning of the doctor's slots. Running it again changes nothing and prints the logins."
    )

    @transaction.atomic
    def handle(self, *args, **options):
        now = timezone.now()
        operator = self._user(OPERATOR[0], "operator@example.com", "Demo Operator", [], staff=True)
        buyer = self._user(DEMO_BUYER, DEMO_BUYER, "Demo Buyer", [Role.GUEST])
        host = self._user(DEMO_HOST, DEMO_HOST, "Dr. Demo Host", [Role.HOST])
        if not Car.objects.exists():
            for dealer_id, make, model, label in DEMO_CARS:
                car_create(dealer_id=dealer_id, make=make, model=model, label=label, actor=operator)
        if not Event.objects.exists():
            event_create(
                name="Demo Concert",
                event_date=now + timedelta(days=30),
                location="Main Hall",
                now=now,
                layout=SeatLayout(sections=("A", "B"), rows=5, seats_per_row=10),
                actor=operator,
            )
        if not Slot.objects.exists():
            morning = timezone.make_aware(datetime.combine(now.date() + timedelta(days=1), time(9)))
            ranges = [
                (morning + timedelta(minutes=30 * i), morning + timedelta(minutes=30 * (i + 1))) for i in range(6)
            ]
            slots_create_many(
                host=host,
                ranges=ranges,
                now=now,
                actor=operator,
                capacity=2,
                title="Consultation",
                specialization="cardiology",
            )
        self.stdout.write(f"Operator login for /admin/: {OPERATOR[0]} / {OPERATOR[1]}")
        self.stdout.write(f"API token of the demo buyer ({DEMO_BUYER}): {buyer.auth_token.key}")
        self.stdout.write(f"API token of the demo host ({DEMO_HOST}): {host.auth_token.key}")
        self.stdout.write(f"API token of the operator: {operator.auth_token.key}")

    def _user(self, username: str, email: str, name: str, roles: list[str], staff: bool = False) -> User:
        user, created = User.objects.get_or_create(
            username=username,
            defaults={"email": email, "name": name, "roles": roles, "is_staff": staff, "is_superuser": staff},
        )
        if created:
            if staff:
                user.set_password(OPERATOR[1])
            else:
                user.set_unusable_password()
            user.save()
            Token.objects.create(user=user)
        return user
