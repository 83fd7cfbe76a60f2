"""Throttling (docs/contract.md §3.6, docs/decisions/0010-abuse-limits.md): DRF's rate throttles, on by
default, switched off by ``THROTTLE_ENABLED`` (the benchmark, the tests), their rates read from
``THROTTLE_RATES`` at each request.

- ``anon``: a client without credentials, by IP address;
- ``user``: a signed-in user, by user;
- a view's ``throttle_scope`` (``holds``: the car, seat and slot holds; ``registration``): a tighter
  rate on its writes (POST, PUT, PATCH, DELETE), by user, or by IP address without credentials.
  Operators (staff) are exempt from the scopes (the caps exempt them too; an operator's client acts
  for many users), not from ``user``.

The counters live in the default cache (``CACHE_URL``): Redis shares them between every web process;
the in-process default (``locmem``) gives each process its own, so N processes allow N times the rate.
Over a rate: 429 ``throttled`` with ``Retry-After`` (``core.errors``)."""

from __future__ import annotations

from django.conf import settings
from rest_framework import throttling
from rest_framework.permissions import SAFE_METHODS

HOLDS, REGISTRATION = "holds", "registration"  # the views' throttle_scope


class _Switched(throttling.SimpleRateThrottle):
    """A rate throttle that lets everything through when ``THROTTLE_ENABLED`` is off or its scope has
    no rate, and reads its rate per request (a changed setting applies at once)."""

    def __init__(self):  # DRF's reads the rate once, at construction: here, allow_request does
        pass

    def get_rate(self) -> str | None:
        return settings.THROTTLE_RATES.get(self.scope) if self.scope else None

    def allow_request(self, request, view) -> bool:
        if not settings.THROTTLE_ENABLED or not self.applies(request, view):
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def applies(self, request, view) -> bool:
        return True


class AnonThrottle(_Switched, throttling.AnonRateThrottle):
    """Requests without credentials, per IP address (``THROTTLE_ANON``)."""

    scope = "anon"


class UserThrottle(_Switched, throttling.UserRateThrottle):
    """Requests of a signed-in user, per user (``THROTTLE_USER``); anonymous ones are ``anon``'s."""

    scope = "user"

    def applies(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated)


class ScopeThrottle(_Switched, throttling.ScopedRateThrottle):
    """The writes of a view with a ``throttle_scope``, per user or IP address (``THROTTLE_HOLDS``,
    ``THROTTLE_REGISTRATION``)."""

    def applies(self, request, view) -> bool:
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope or request.method in SAFE_METHODS:
            return False
        return not (request.user and request.user.is_staff)

    def get_cache_key(self, request, view) -> str:
        user = request.user
        ident = user.pk if user and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}
