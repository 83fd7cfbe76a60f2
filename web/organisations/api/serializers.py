from rest_framework import serializers

from core.organisations.models import Membership, Organisation
from core.organisations.roles import Role
from web.api import ModelSerializer, StrictSerializer


class OrganisationIn(StrictSerializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=64)


class OrganisationOut(ModelSerializer):
    role = serializers.CharField(
        source="caller_role", allow_null=True, help_text="Your role in it (null: a superuser who is not a member)"
    )
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Organisation
        fields = ["id", "name", "slug", "role", "createdAt"]


class MemberIn(StrictSerializer):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices)


class MemberOut(ModelSerializer):
    userId = serializers.IntegerField(source="user_id")
    organisationId = serializers.IntegerField(source="organisation_id")
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.name")
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Membership
        fields = ["userId", "organisationId", "email", "name", "role", "createdAt"]
