"""The platform's own endpoints: the API root, ``GET /api/health`` and ``GET /api/health/ready``
(docs/contract.md §8.4), and ``/metrics``."""

from django.db import connection
from django.http import HttpResponse
from django_prometheus.exports import ExportToDjangoView
from drf_spectacular.utils import extend_schema, inline_serializer
from prometheus_client import generate_latest
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from config.celery import app as celery_app
from core.errors import envelope
from core.invariants import last_report
from core.metrics import DATABASE_GAUGES, INVARIANT_VIOLATIONS, INVARIANTS_CHECKED


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:  # any failure means "down": report it, never raise
        return f"down: {exc.__class__.__name__}"


def _broker() -> str:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:
        return f"down: {exc.__class__.__name__}"


class Health(APIView):
    """Database and broker reachability: 200 when both answer, 503 otherwise (the whole system: a
    monitor asks this)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []
    checks = {"database": _database, "broker": _broker}

    @extend_schema(
        responses={
            200: inline_serializer("Health", {"status": serializers.CharField(), "checks": serializers.DictField()}),
        },
    )
    def get(self, request):
        checks = {name: check() for name, check in self.checks.items()}
        if all(value == "ok" for value in checks.values()):
            return Response({"status": "ok", "checks": checks})
        response = Response(envelope("unavailable", "A dependency is down.", {"checks": checks}), status=503)
        response["Retry-After"] = "5"
        return response


class Ready(Health):
    """Whether this web process can serve requests: the database answers (a load balancer asks this).
    The broker is left out: no request needs it to answer (a webhook kick that cannot reach it is a
    logged warning, and the deliveries wait in the database for the broker), so a broker outage must not
    take every web process out of the pool."""

    checks = {"database": _database}


class ApiRoot(APIView):
    """Where to go from here: every collection of the API, the schema and its docs."""

    permission_classes = [AllowAny]

    @extend_schema(exclude=True)
    def get(self, request):
        names = [
            "user-register",
            "user-me",
            "calendar-feed",
            "car-list",
            "reservation-list",
            "event-list",
            "slot-list",
            "booking-list",
            "health",
            "health-ready",
            "schema",
            "docs",
        ]
        return Response({name: reverse(name, request=request) for name in names})


def metrics_export(request) -> HttpResponse:
    """/metrics: django-prometheus' page (one worker's registry, or every worker's in multiprocess mode),
    with the invariant gauges set from the last stored report first (one query), and the DATABASE_GAUGES."""
    report = last_report()
    INVARIANTS_CHECKED.set(report.checked_at.timestamp() if report is not None else 0)
    for result in report.results if report is not None else []:
        INVARIANT_VIOLATIONS.labels(result["name"]).set(result["violations"])
    response = ExportToDjangoView(request)
    response.content = response.content + generate_latest(DATABASE_GAUGES)
    return response
