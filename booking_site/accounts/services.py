from typing import cast

from django.db import IntegrityError, transaction
from django.http import HttpRequest
from rest_framework.authtoken.models import Token
from rest_framework.request import Request

from booking_site.accounts.models import User
from booking_site.errors import Conflict, Forbidden, NotFound, NotOwner


class EmailTaken(Conflict):
    code = "email_taken"


@transaction.atomic
def user_register(*, email: str, name: str, roles: list[str], password: str | None = None) -> tuple[User, Token]:
    """Create a user with an API token. The case-insensitive unique email constraint settles races."""
    if User.objects.filter(email__iexact=email).exists():
        raise EmailTaken(f"A user with email {email} already exists.")
    try:
        with transaction.atomic():
            user = User(username=email, email=email, name=name, roles=sorted(set(roles)))
            user.set_password(password) if password else user.set_unusable_password()
            user.save()
    except IntegrityError:
        raise EmailTaken(f"A user with email {email} already exists.") from None
    return user, Token.objects.create(user=user)


def request_user(request: Request | HttpRequest) -> User:
    """The caller of a request that had to authenticate: an API view (IsAuthenticated is the default
    permission, and StaffWrites extends it) or an admin page (staff, logged in). ``request.user`` is then
    a ``User``, never ``AnonymousUser``: this is where that guarantee becomes a type."""
    return cast(User, request.user)


def acting_user(*, caller: User, user_id: int | None) -> User:
    """The user a request acts for (docs/contract.md §3.3): the caller, or anyone when the caller is staff."""
    if user_id is None or user_id == caller.pk:
        return caller
    if not caller.is_staff:
        raise Forbidden("You may only act for yourself.")
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise NotFound(f"User {user_id} does not exist.")
    return user


def require_owner(*, user: User, owner_id: int, what: str) -> None:
    """Only the owner of a claim, or an operator, may see or change it (docs/contract.md §2.6)."""
    if owner_id != user.pk and not user.is_staff:
        raise NotOwner(f"{what} belongs to another user.")
