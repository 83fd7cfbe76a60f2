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
"""

from __future__ import annotations

import copy
import threading

from cachetools import TTLCache
from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from booking_site.accounts.models import User

_cache: TTLCache[str, Token] = TTLCache(maxsize=settings.AUTH_TOKEN_CACHE_SIZE, ttl=settings.AUTH_TOKEN_CACHE_SECONDS)
_lock = threading.Lock()  # TTLCache is not thread-safe; threaded servers share it


class CachedTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``, with the token → user lookup cached in this process."""

    def authenticate_credentials(self, key: str):
        with _lock:
            token = _cache.get(key)
        if token is None:
            _, token = super().authenticate_credentials(key)  # 401 for an unknown key or inactive user
            if settings.AUTH_TOKEN_CACHE_SECONDS > 0:
                with _lock:
                    _cache[key] = token
        return copy.copy(token.user), token


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
