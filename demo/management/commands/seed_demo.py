from datetime import date, datetime, time, timedelta

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core.organisations.models import Organisation
from events.models import Event
from events.services.events import SeatLayout, event_create
from reservations.models import Car
from reservations.services import car_create
from slots.availability import availability_clean
from slots.models import Availability, Slot
from slots.services.slots import availability_set, slots_create_many
from web.accounts.models import Role, User

OPERATOR = ("operator", "operator")  # development only: the demo data is for a local machine
DEMO_BUYER = "buyer@example.com"
DEMO_HOST = "doctor@example.com"
# The demo host's week: weekday mornings and afternoons with a lunch break, in the operators' TIME_ZONE.
DEMO_HOURS = [("09:00", "12:30"), ("13:30", "17:00")]
DEMO_CARS = [
    (1, "Volvo", "XC40", "Volvo XC40 Recharge, white"),
    (1, "Tesla", "Model 3", "Tesla Model 3 Long Range, blue"),
    (2, "Toyota", "Corolla", "Toyota Corolla Hybrid, grey"),
    (2, "Ford", "Mustang", "Ford Mustang Mach-E, red"),
]


class Command(BaseCommand):
    help = (
        "Load the small demo data set once: an operator login (operator / operator) for /admin/, a demo "
        "buyer and a demo host (a doctor) with API tokens, a few cars, an event with a 100-seat layout, "
        "the doctor's weekday hours and a morning of their slots on the next weekday. Running it again "
        "changes nothing and prints the logins."
    )

    @transaction.atomic
    def handle(self, *args, **options):
        now = timezone.now()
        operator = self._user(OPERATOR[0], "operator@example.com", "Demo Operator", [], staff=True)
        buyer = self._user(DEMO_BUYER, DEMO_BUYER, "Demo Buyer", [Role.GUEST])
        host = self._user(DEMO_HOST, DEMO_HOST, "Dr. Demo Host", [Role.HOST])
        demo, _ = Organisation.objects.get_or_create(
            slug="demo", defaults={"name": "Demo organisation", "created_at": now}
        )
        if not Car.objects.exists():
            for dealer_id, make, model, label in DEMO_CARS:
                car_create(
                    organisation_id=demo.pk, dealer_id=dealer_id, make=make, model=model, label=label, actor=operator
                )
        if not Event.objects.exists():
            event_create(
                organisation_id=demo.pk,
                name="Demo Concert",
                event_date=now + timedelta(days=30),
                location="Main Hall",
                now=now,
                layout=SeatLayout(sections=("A", "B"), rows=5, seats_per_row=10),
                actor=operator,
            )
        if not Slot.objects.exists():
            day = timezone.localdate(now) + timedelta(days=1)
            while day.weekday() >= 5:  # within the demo host's weekday hours
                day += timedelta(days=1)
            morning = timezone.make_aware(datetime.combine(day, time(9)))
            ranges = [
                (morning + timedelta(minutes=30 * i), morning + timedelta(minutes=30 * (i + 1))) for i in range(6)
            ]
            slots_create_many(
                host=host,
                organisation_id=demo.pk,
                ranges=ranges,
                now=now,
                actor=operator,
                capacity=2,
                title="Consultation",
                specialization="cardiology",
            )
        if not Availability.objects.filter(host=host).exists():
            availability_set(
                host=host,
                fields=availability_clean(
                    {
                        "timeZone": timezone.get_current_timezone_name(),
                        "weekly": [{"weekday": day, "start": s, "end": e} for day in range(5) for s, e in DEMO_HOURS],
                        "overrides": [],
                        "durations": [30, 60],
                        "minimumNoticeMinutes": 60,
                        "bufferMinutes": 0,
                    }
                ),
                actor=operator,
                now=now,
                organisation_id=demo.pk,
            )
        self.stdout.write(f"Operator login for /admin/: {OPERATOR[0]} / {OPERATOR[1]}")
        first = Slot.objects.filter(host=host).order_by("start").values_list("start", flat=True).first()
        week = f"?week={_monday(first)}" if first else ""  # the week of the demo slots
        self.stdout.write(f"The demo host's week: /admin/slots/availability/{host.pk}/change/{week}")
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


def _monday(moment: datetime) -> date:
    day = timezone.localdate(moment)
    return day - timedelta(days=day.weekday())
