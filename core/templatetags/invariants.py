"""``{% invariants_status as status %}``: the invariant monitor's last report for the admin index. A superuser
reads all of it; a member of organisations (docs/contract.md §2.6) only the broken invariants with rows of
theirs, and those rows alone: another organisation's row is neither linked nor named."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypedDict

from django import template
from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from core.admin import OrganisationScoped, caller
from core.invariants import last_report

register = template.Library()


class Broken(TypedDict):
    name: str
    holds: str
    violations: int
    rows: list[tuple[str, str | None]]  # (id, its admin page or None)


class Status(TypedDict):
    checked_at: datetime | None  # None: never checked
    ago: str  # how long ago, "20 s"
    stale: bool  # older than three intervals of the beat job: is beat running?
    total: int
    broken: list[Broken]
    everything: bool  # the whole report (a superuser's), not one organisation's part of it


def _page(model: str, pk: str) -> str | None:
    try:
        return reverse(f"admin:{model.replace('.', '_')}_change", args=[pk])
    except NoReverseMatch:  # a model without an admin page
        return None


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"


def _visible(request, model: str, rows: list[str]) -> list[str]:
    """Of ``rows`` (ids of ``model``, an ``app.Model`` label), those the caller's admin list shows."""
    if caller(request).is_superuser:
        return rows
    kind = apps.get_model(model)
    model_admin = admin.site.get_model_admin(kind) if admin.site.is_registered(kind) else None
    if not isinstance(model_admin, OrganisationScoped) or not model_admin.has_view_permission(request):
        return []  # rows of the platform's own, or of a kind this role does not see
    shown = {str(pk) for pk in model_admin.get_queryset(request).filter(pk__in=rows).values_list("pk", flat=True)}
    return [pk for pk in rows if pk in shown]


@register.simple_tag(takes_context=True)
def invariants_status(context) -> Status:
    request, everything = context["request"], caller(context["request"]).is_superuser
    report = last_report()
    if report is None:
        return Status(checked_at=None, ago="", stale=True, total=0, broken=[], everything=everything)
    every = settings.BEAT_SCHEDULE_SECONDS["booking_site.tasks.check_invariants"]
    age = timezone.now() - report.checked_at
    return Status(
        checked_at=report.checked_at,
        ago=_ago(age.total_seconds()),
        stale=age > timedelta(seconds=3 * every),
        total=len(report.results),
        broken=[
            Broken(
                name=r["name"],
                holds=r["holds"],
                violations=r["violations"] if everything else len(rows),
                rows=[(pk, _page(r["model"], pk)) for pk in rows],
            )
            for r in report.broken
            if (rows := _visible(request, r["model"], r["rows"]))
        ],
        everything=everything,
    )
