import factory
from rest_framework.authtoken.models import Token

from web.accounts.models import Role, User


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
