from rest_framework import serializers

from web.accounts.models import Role, User
from web.api import ModelSerializer, StrictSerializer


class UserRegisterIn(StrictSerializer):
    email = serializers.EmailField(max_length=150)
    name = serializers.CharField(max_length=150)
    roles = serializers.ListField(child=serializers.ChoiceField(choices=Role.choices), max_length=2, default=list)
    password = serializers.CharField(
        min_length=8, max_length=128, required=False, write_only=True, help_text="Optional: for the browsable API"
    )


class UserOut(ModelSerializer):
    isStaff = serializers.BooleanField(source="is_staff")
    createdAt = serializers.DateTimeField(source="date_joined")

    class Meta:
        model = User
        fields = ["id", "email", "name", "roles", "isStaff", "createdAt"]


class UserWithTokenOut(UserOut):
    token = serializers.CharField(source="auth_token.key")

    class Meta(UserOut.Meta):
        fields = [*UserOut.Meta.fields, "token"]


class CalendarFeedOut(serializers.Serializer):
    url = serializers.URLField(help_text="Subscribe to it in a calendar app; shown this once (only its hash is kept)")
