"""API token authentication without a database round trip on the hot path.

DRF's ``TokenAuthentication`` reads the token and its user on every request. Here a successful lookup is
remembered in this process for ``AUTH_TOKEN_CACHE_SECONDS`` (docs/decisions/0006-request-floor.md):

- a token deleted, or a user saved or deleted, through the ORM in this process is forgotten at once
  (signals below): the admin's "delete token", a deactivation, a role change;
- every other process forgets it when its entry ages out, so a revoked token, a deactivated user or a
  changed role works for at most ``AUTH_TOKEN_CACHE_SECONDS`` more on another process (and on this
  one too after a bulk ``QuerySet.update()``, which sends no signals).

Each request gets its own copy of the user, so nothing a view does to ``request.user`` leaks into the
next request.

The lookup reads the user's memberships with the user (``core.organisations.access.roles_of`` then
asks nothing more in the request): a membership saved or deleted in this process forgets the user's
tokens at once; another process sees it within ``AUTH_TOKEN_CACHE_SECONDS``, as a changed role — and a
write checks the membership again under its lock (``core.locking.member_lock_sql``).

A lookup (a key this process has not seen for ``AUTH_TOKEN_CACHE_SECONDS``) is one statement composed
once from the two models' ``_meta``: DRF's ORM query compiled the same join on every miss, 1.2 ms of
CPU, more than the rest of a ``GET /api/users/me`` twice over (docs/decisions/0006-request-floor.md).
"""

from __future__ import annotations

import threading
from typing import cast

from cachetools import TTLCache
from django.conf import settings
from django.db import connection
from django.db.models import Field, Model
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils.translation import gettext_lazy as _
from psycopg import sql
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from core.organisations.models import Membership, keep_roles
from web.accounts.models import User

_cache: TTLCache[str, Token] = TTLCache(maxsize=settings.AUTH_TOKEN_CACHE_SIZE, ttl=settings.AUTH_TOKEN_CACHE_SECONDS)
_lock = threading.Lock()  # TTLCache is not thread-safe; threaded servers share it


def _column(model: type[Model], field: Field) -> sql.Identifier:
    return sql.Identifier(model._meta.db_table, cast(str, field.column))


def _columns(model: type[Model]) -> sql.Composable:
    return sql.SQL(", ").join([_column(model, field) for field in model._meta.concrete_fields])


# The token and its user, every concrete column of both in _meta order (what Model.from_db reads), and the
# user's memberships as {organisation id: role}.
_TOKEN_FIELDS = [field.attname for field in Token._meta.concrete_fields]
_USER_FIELDS = [field.attname for field in User._meta.concrete_fields]
_LOOKUP = (
    sql.SQL(
        "SELECT {}, {}, m.organisations, m.roles FROM {} JOIN {} ON {} = {} "
        "LEFT JOIN LATERAL (SELECT array_agg({}) AS organisations, array_agg({}) AS roles FROM {} WHERE {} = {}) m "
        "ON true "
        "WHERE {} = %s"
    )
    .format(
        _columns(Token),
        _columns(User),
        sql.Identifier(Token._meta.db_table),
        sql.Identifier(User._meta.db_table),
        _column(User, User._meta.pk),
        _column(Token, Token._meta.get_field("user")),
        _column(Membership, Membership._meta.get_field("organisation")),
        _column(Membership, Membership._meta.get_field("role")),
        sql.Identifier(Membership._meta.db_table),
        _column(Membership, Membership._meta.get_field("user")),
        _column(User, User._meta.pk),
        _column(Token, Token._meta.get_field("key")),
    )
    .as_string(None)
)


def _lookup(key: str) -> Token:
    """The token ``key`` with its user, or DRF's 401s (an unknown key; an inactive user)."""
    with connection.cursor() as cursor:
        cursor.execute(_LOOKUP, [key])
        row = cursor.fetchone()
    if row is None:
        raise AuthenticationFailed(_("Invalid token."))
    split = len(_TOKEN_FIELDS)
    token = Token.from_db(connection.alias, _TOKEN_FIELDS, row[:split])
    token.user = User.from_db(connection.alias, _USER_FIELDS, row[split:-2])
    keep_roles(token.user, dict(zip(row[-2] or [], row[-1] or [], strict=True)))
    if not token.user.is_active:
        raise AuthenticationFailed(_("User inactive or deleted."))
    return token


class CachedTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``, with the token → user lookup cached in this process."""

    def authenticate_credentials(self, key: str):
        with _lock:
            token = _cache.get(key)
        if token is None:
            token = _lookup(key)
            if settings.AUTH_TOKEN_CACHE_SECONDS > 0:
                with _lock:
                    _cache[key] = token
        return _copy_of(token.user), token


def _copy_of(user: User) -> User:
    """What ``copy.copy(user)`` makes (``Model.__getstate__``: its fields, its own ``_state`` and fields
    cache), without the pickling protocol ``copy.copy`` goes through to get there (``Model.__reduce__``,
    ``model_unpickle``): 2 % of a car hold's CPU, on every request with a token."""
    clone = User.__new__(User)
    clone.__dict__.update(user.__getstate__())
    return clone


def forget_user(user_id: int) -> None:
    with _lock:
        for key in [key for key, token in _cache.items() if token.user_id == user_id]:
            _cache.pop(key, None)


@receiver(post_delete, sender=Token)
def _token_deleted(sender, instance: Token, **kwargs) -> None:
    with _lock:
        _cache.pop(instance.key, None)


@receiver(post_save, sender=User)
@receiver(post_delete, sender=User)
def _user_changed(sender, instance: User, **kwargs) -> None:
    forget_user(instance.pk)


@receiver(post_save, sender=Membership)
@receiver(post_delete, sender=Membership)
def _membership_changed(sender, instance: Membership, **kwargs) -> None:
    forget_user(instance.user_id)
