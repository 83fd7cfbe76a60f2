"""Start a delivery run soon after a request may have written audit events, so a healthy endpoint hears
within a second rather than at the next beat tick — without the request ever waiting for it.

A request only sets an event (no database, no broker: nanoseconds, and nothing that can fail). One
daemon thread per process waits for it, asks the database whether any endpoint is active (the answer
kept ENDPOINTS_CHECK_SECONDS), and if so publishes ``deliver_audit_events`` to the broker, by its name
as beat does (the services kick, the job runs the services: this module imports neither); kicks that
arrive meanwhile are folded into one, at most one publish per KICK_INTERVAL_SECONDS. A broker that is
down costs a logged warning in that thread; beat's run every few seconds delivers anyway.
docs/decisions/0013-webhooks.md.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import signature
from django.conf import settings
from django.db import connections
from rest_framework.permissions import SAFE_METHODS

logger = logging.getLogger(__name__)

ENDPOINTS_CHECK_SECONDS = 5.0
KICK_INTERVAL_SECONDS = 0.1

DELIVER = "booking_site.webhooks.tasks.deliver_audit_events"  # the job, named as in BEAT_SCHEDULE_SECONDS

_wake = threading.Event()
_start = threading.Lock()
_thread: threading.Thread | None = None
_endpoints: tuple[float, bool] | None = None  # (monotonic time checked, whether an active endpoint exists)


def soon() -> None:
    """Ask for a delivery run soon. Never blocks, never raises."""
    global _thread
    if not settings.WEBHOOK_KICK:
        return
    _wake.set()
    if _thread is None or not _thread.is_alive():  # the first kick of this process (after a fork, too)
        with _start:
            if _thread is None or not _thread.is_alive():
                _thread = threading.Thread(target=_kicker, name="webhook-kick", daemon=True)
                _thread.start()


def endpoints_changed() -> None:
    """An endpoint was added, changed or removed here: look again at the next kick."""
    global _endpoints
    _endpoints = None
    soon()


def _kicker() -> None:
    while True:
        _wake.wait()
        _wake.clear()
        try:
            if _active_endpoints():
                signature(DELIVER).apply_async(retry=False)
        except Exception:
            logger.warning("could not start a webhook delivery run (beat's next run delivers)", exc_info=True)
        time.sleep(KICK_INTERVAL_SECONDS)


def _active_endpoints() -> bool:
    global _endpoints
    if _endpoints is None or time.monotonic() - _endpoints[0] > ENDPOINTS_CHECK_SECONDS:
        from web.webhooks.models import WebhookEndpoint

        try:
            _endpoints = (time.monotonic(), WebhookEndpoint.objects.filter(active=True).exists())
        finally:
            connections.close_all()  # this thread's own connection: not kept between kicks
    return _endpoints[1]


class KickDeliveryMiddleware:
    """After every request that may have written (any method but GET, HEAD, OPTIONS, TRACE), once its
    transaction has committed (the view has returned), kick a delivery run."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.method not in SAFE_METHODS:
            soon()
        return response
