"""``{% invariants_status as status %}``: the invariant monitor's last report for the admin index."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypedDict

from django import template
from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

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


@register.simple_tag
def invariants_status() -> Status:
    report = last_report()
    if report is None:
        return Status(checked_at=None, ago="", stale=True, total=0, broken=[])
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
                violations=r["violations"],
                rows=[(pk, _page(r["model"], pk)) for pk in r["rows"]],
            )
            for r in report.broken
        ],
    )
