import factory
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core.organisations import access
from core.organisations.models import Membership, Organisation, keep_roles
from core.organisations.roles import Role as OrganisationRole
from web.accounts.models import Role, User


def house() -> Organisation:
    """The organisation the tests' cars, events, slots and webhook endpoints belong to unless a test says
    otherwise (made on first use: a ``transaction=True`` test's flush removes it)."""
    organisation, _ = Organisation.objects.get_or_create(
        slug="house", defaults={"name": "House", "created_at": timezone.now()}
    )
    return organisation


class OrganisationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organisation

    name = factory.Sequence(lambda n: f"Organisation {n}")
    slug = factory.Sequence(lambda n: f"organisation-{n}")
    created_at = factory.LazyFunction(timezone.now)


def member(user: User, organisation: Organisation | None = None, role: str = OrganisationRole.STAFF) -> Membership:
    """``user`` made a member of ``organisation`` (the house by default) with ``role``, and the user object
    keeping its memberships as the token lookup would read them now."""
    membership = Membership.objects.create(
        user=user, organisation=organisation or house(), role=role, created_at=timezone.now()
    )
    access.forget(user)
    access.roles_of(user)
    return membership


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}@example.com")
    email = factory.SelfAttribute("username")
    name = factory.Faker("name")
    roles = factory.LazyFunction(lambda: [Role.GUEST])
    password = factory.django.Password("correct horse battery staple")

    @factory.post_generation
    def token(user, create, extracted, **kwargs):
        if create:
            Token.objects.create(user=user)
            # A new user belongs to no organisation: kept on the object as the token lookup keeps it, so a
            # service called with it reads no memberships (``member`` says otherwise).
            keep_roles(user, {})


def house_operator(organisation: Organisation | None = None, role: str = OrganisationRole.OWNER) -> User:
    """An operator of ``organisation`` (the house by default): staff (the admin's login) and a member with
    ``role`` (an owner by default: what every operator was before organisations, and what
    ``organisations/0002`` made them)."""
    user = UserFactory(is_staff=True)
    member(user, organisation, role)
    return user
