from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from rest_framework.authtoken.models import Token

from booking_site.accounts.models import Role
from reservations.models import Car
from reservations.services import car_create

User = get_user_model()

OPERATOR = ("operator", "operator")  # development only: the demo data is for a local machine
DEMO_BUYER = "buyer@example.com"
DEMO_CARS = [
    (1, "Volvo", "XC40", "Volvo XC40 Recharge, white"),
    (1, "Tesla", "Model 3", "Tesla Model 3 Long Range, blue"),
    (2, "Toyota", "Corolla", "Toyota Corolla Hybrid, grey"),
    (2, "Ford", "Mustang", "Ford Mustang Mach-E, red"),
]


class Command(BaseCommand):
    help = (
        "Load the small demo data set once: an operator login (operator / operator) for /admin/, a demo "
        "buyer with an API token, and a few cars. Running it again changes nothing and prints the logins."
    )

    @transaction.atomic
    def handle(self, *args, **options):
        operator, created = User.objects.get_or_create(
            username=OPERATOR[0],
            defaults={"email": "operator@example.com", "name": "Demo Operator", "is_staff": True, "is_superuser": True},
        )
        if created:
            operator.set_password(OPERATOR[1])
            operator.save()
            Token.objects.create(user=operator)
        buyer, created = User.objects.get_or_create(
            username=DEMO_BUYER, defaults={"email": DEMO_BUYER, "name": "Demo Buyer", "roles": [Role.GUEST]}
        )
        if created:
            buyer.set_unusable_password()
            buyer.save()
            Token.objects.create(user=buyer)
        if not Car.objects.exists():
            for dealer_id, make, model, label in DEMO_CARS:
                car_create(dealer_id=dealer_id, make=make, model=model, label=label)
        self.stdout.write(f"Operator login for /admin/: {OPERATOR[0]} / {OPERATOR[1]}")
        self.stdout.write(f"API token of the demo buyer ({DEMO_BUYER}): {buyer.auth_token.key}")
        self.stdout.write(f"API token of the operator: {operator.auth_token.key}")
