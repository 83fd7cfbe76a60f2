import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import cast

from django.db import IntegrityError, transaction
from django.http import HttpRequest
from rest_framework.authtoken.models import Token
from rest_framework.request import Request

from core.errors import Conflict, Forbidden, NotFound
from core.organisations import access
from web.accounts.models import CalendarFeed, User


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
    permission, and OperatorWrites extends it) or an admin page (staff, logged in). ``request.user`` is then
    a ``User``, never ``AnonymousUser``: this is where that guarantee becomes a type."""
    return cast(User, request.user)


def acting_user(*, caller: User, user_id: int | None, organisation: Callable[[], int | None] | None = None) -> User:
    """The user a request acts for (docs/contract.md §3.3): the caller, or anyone when the caller is an
    operator — of ``organisation`` (read only then), when the request's object is known here: another
    organisation's is 404 (docs/contract.md §2.6). The holds check theirs in the engine."""
    if user_id is None or user_id == caller.pk:
        return caller
    if not access.is_operator(caller):
        raise Forbidden("You may only act for yourself.")
    organisation_id = organisation() if organisation is not None else None
    if organisation_id is not None and not access.may_act(caller, organisation_id):
        raise access.refusal(caller, what="What you act on")
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise NotFound(f"User {user_id} does not exist.")
    return user


# --- the private calendar feed (docs/contract.md §3.8) ----------------------------------------------


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def calendar_feed_issue(*, user: User, now: datetime) -> str:
    """A new secret for the user's feed, returned this once; the previous one stops working as this
    commits. One statement (an upsert on the user), so two at once leave exactly one secret alive."""
    secret = secrets.token_urlsafe(32)
    CalendarFeed.objects.bulk_create(
        [CalendarFeed(user=user, secret_sha256=_sha256(secret), created_at=now)],
        update_conflicts=True,
        unique_fields=["user"],
        update_fields=["secret_sha256", "created_at"],
    )
    return secret


def calendar_feed_revoke(*, user: User) -> bool:
    """Turn the user's feed off; False when it was off already."""
    deleted, _ = CalendarFeed.objects.filter(user=user).delete()
    return bool(deleted)


def calendar_feed_owner(secret: str) -> User | None:
    """The user whose feed ``secret`` opens (an active one), or None."""
    feed = CalendarFeed.objects.select_related("user").filter(secret_sha256=_sha256(secret)).first()
    return feed.user if feed is not None and feed.user.is_active else None
