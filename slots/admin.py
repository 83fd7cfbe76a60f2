"""The operators' back office for slots: single and bulk slot creation for any host, bookings with
their audit trail, cancel / expire actions, a bookings-per-day chart, and hosts' availability with their
week as a picture. Every write calls a service."""

import contextlib
import math
from datetime import date, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from core.admin import AuditTrailMixin, ClaimAdmin, OrganisationScoped, ServiceActionsMixin, StateFilter
from core.errors import DomainError
from core.organisations import access
from slots import selectors
from slots.api.serializers import EARLIEST_DAY, LATEST_DAY
from slots.forms import AnalyticsForm, AvailabilityForm, BulkSlotForm, SlotAddForm, lengths_text
from slots.models import Availability, Slot, SlotBooking
from slots.services import bookings, slots
from web.accounts.services import request_user
from web.exports import CsvExportMixin


@admin.register(Slot)
class SlotAdmin(AuditTrailMixin, ServiceActionsMixin, OrganisationScoped):
    change_list_template = "admin/slots/slot/change_list.html"
    list_display = ["id", "host", "title", "specialization", "start", "end", "capacity", "remaining", "status"]
    list_filter = ["status", "specialization", ("host", admin.RelatedOnlyFieldListFilter), "start"]
    search_fields = ["title", "specialization", "host__email", "host__name", "=id"]
    list_select_related = ["host"]
    date_hierarchy = "start"
    actions = ["cancel_slots"]
    fields = ["organisation", "host", "title", "specialization", "start", "end", "capacity"]
    readonly_on_change = [
        "organisation",
        "host",
        "start",
        "end",
        "capacity",
        "booked",
        "status",
        "created_at",
        "updated_at",
    ]

    def get_queryset(self, request):
        return self.scope(request, selectors.slots_with_remaining(now=timezone.now()))

    @admin.display(description="Seats free now", ordering="remaining_capacity")
    def remaining(self, slot):
        return slot.remaining_capacity

    def get_fields(self, request, obj=None):
        if obj is None:
            return self.fields
        return ["title", "specialization", *self.readonly_on_change, "audit_trail"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else [*self.readonly_on_change, "audit_trail"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = SlotAddForm
            form = super().get_form(request, obj, change, **kwargs)
            return type("SlotAddFormForRequest", (form,), {"request": request})
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request, obj, form, change):
        if not change:  # SlotAddForm.clean() created it through slot_create
            form.adopt(obj)
            return
        slots.slot_update_details(
            slot_id=obj.pk,
            title=obj.title,
            specialization=obj.specialization,
            actor=request.user,
            now=timezone.now(),
        )

    def has_delete_permission(self, request, obj=None):
        return False  # withdraw with the action: the row stays, CANCELLED

    @admin.action(description="Withdraw selected slots (only if nobody holds a seat)", permissions=["change"])
    def cancel_slots(self, request, queryset):
        self.run_service(
            request,
            queryset,
            lambda slot: slots.slot_cancel(slot_id=slot.pk, user=request.user, now=timezone.now()),
            "withdrawn",
        )

    def get_urls(self):
        bulk = path("bulk-add/", self.admin_site.admin_view(self.bulk_add_view), name="slots_slot_bulk_add")
        return [bulk, *super().get_urls()]

    def bulk_add_view(self, request):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = BulkSlotForm(request.POST or None, request=request)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                created = slots.slots_create_many(
                    organisation_id=data["organisation"].pk,
                    host=data["host"],
                    ranges=form.ranges(),
                    capacity=data["capacity"],
                    title=data["title"],
                    specialization=data["specialization"],
                    actor=request.user,
                    now=timezone.now(),
                )
            except DomainError as error:
                form.add_error(None, f"No slots were created. {error.message}")
            else:
                self.message_user(request, f"{len(created)} slots created for {data['host']}.", messages.SUCCESS)
                if form.skipped:
                    self.message_user(request, form.skipped_note().strip(), messages.WARNING)
                return HttpResponseRedirect(reverse("admin:slots_slot_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Add slots in bulk",
            "form": form,
            # The admin's own form layout. django-stubs wants a ModelForm; AdminForm only reads the fields.
            "adminform": helpers.AdminForm(form, form.fieldsets, {}, model_admin=self),  # type: ignore[arg-type]
            "media": self.media + form.media,
            "time_zone": timezone.get_current_timezone_name(),
        }
        return TemplateResponse(request, "admin/slots/bulk_add.html", context)


class StartDayFilter(admin.SimpleListFilter):
    """Bookings taking place on one day, in the operators' time zone (``?day=YYYY-MM-DD``; the next two
    weeks are offered): a day's list, and its export."""

    title, parameter_name = "day", "day"

    def lookups(self, request, model_admin):
        today = timezone.localdate()
        days = [today + timedelta(days=n) for n in range(14)]
        return [(day.isoformat(), "Today" if day == today else f"{day:%a} {day.day} {day:%b}") for day in days]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise admin.options.IncorrectLookupParameters(f"Not a day: {value}") from None
        zone = timezone.get_current_timezone()
        since, until = selectors.booking_days(day, day, zone)
        return queryset.filter(start__gte=since, start__lt=until)


class MovedFilter(admin.SimpleListFilter):
    """Bookings rescheduled away (their successor is on the new slot) or not: the bookings-per-day page
    counts a moved booking once, as its latest row."""

    title, parameter_name = "rescheduled away", "moved"

    def lookups(self, request, model_admin):
        return [("yes", "Moved to another slot"), ("no", "Not moved (what bookings per day counts)")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(rescheduled_as__isnull=self.value() == "no")
        return queryset


@admin.register(SlotBooking)
class SlotBookingAdmin(CsvExportMixin, ClaimAdmin):
    """Operators look and act through the actions (which call the services); rows are never edited."""

    change_list_template = "admin/slots/slotbooking/change_list.html"
    cap = bookings.SLOT_BOOKINGS.cap
    organisation_field = "slot__organisation"
    list_display = ["id", "slot", "guest", "seats", "state_now", "hold_expires", "created_at"]
    list_filter = [
        StateFilter,
        MovedFilter,
        StartDayFilter,
        ("slot__host", admin.RelatedOnlyFieldListFilter),
        "created_at",
    ]
    search_fields = ["guest__email", "guest__name", "=id", "=slot__id", "=idempotency_key"]
    export_columns = [
        ("booking", "id"),
        ("slot", "slot_id"),
        ("title", "slot__title"),
        ("host email", "slot__host__email"),
        ("host name", "slot__host__name"),
        ("start", "start"),
        ("end", "end"),
        ("guest email", "guest__email"),
        ("guest name", "guest__name"),
        ("seats", "seats"),
        ("state", "effective_state"),
        ("reason", "reason"),
        ("created at", "created_at"),
    ]
    list_select_related = ["slot", "slot__host", "guest"]
    date_hierarchy = "created_at"
    actions = ["cancel", "expire_now"]
    readonly_fields = [
        "slot",
        "guest",
        "seats",
        "state_now",
        "hold_expires",
        "reason",
        "metadata",
        "rescheduled_from",
        "idempotency_key",
        "created_at",
        "updated_at",
        "reminded_at",
        "audit_trail",
    ]
    fields = tuple(readonly_fields)  # the page shows these, "State" once, not the stored state beside it

    def get_queryset(self, request):
        bookings = selectors.slot_bookings_with_effective_state(now=timezone.now()).select_related(
            "guest", "slot__host"
        )
        return self.scope(request, bookings)

    @admin.action(description="Cancel selected bookings", permissions=["change"])
    def cancel(self, request, queryset):
        self.run_service(
            request,
            queryset,
            lambda booking: bookings.slot_booking_cancel(
                booking_id=booking.pk, user=request.user, now=timezone.now(), reason="cancelled by operator"
            ),
            "cancelled",
        )

    @admin.action(description="Expire selected pending holds now", permissions=["change"])
    def expire_now(self, request, queryset):
        self.run_service(
            request,
            queryset,
            lambda booking: bookings.slot_booking_expire(booking_id=booking.pk, user=request.user, now=timezone.now()),
            "expired",
        )

    def get_urls(self):
        chart = path("analytics/", self.admin_site.admin_view(self.analytics_view), name="slots_slotbooking_analytics")
        return [chart, *super().get_urls()]

    def analytics_view(self, request):
        """The bookings of the caller's organisations (a superuser: of all), per day."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        today = timezone.localdate()
        form = AnalyticsForm(request.GET or {"start_date": today - timedelta(days=29), "end_date": today})
        analytics = in_the_list = None
        if form.is_valid():
            start, end = form.cleaned_data["start_date"], form.cleaned_data["end_date"]
            analytics = selectors.booking_analytics(
                start_date=start, end_date=end, organisations=access.scope(request_user(request), None)
            )
            since, until = selectors.booking_days(start, end, timezone.get_current_timezone())
            # The same bookings in the list beside this page: made in the window, a moved one once.
            query = {"created_at__gte": since.isoformat(), "created_at__lt": until.isoformat(), "moved": "no"}
            in_the_list = f"{reverse('admin:slots_slotbooking_changelist')}?{urlencode(query)}"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Bookings per day",
            "form": form,
            "analytics": analytics,
            "in_the_list": in_the_list,
            "chart": _bar_chart(analytics.bookings_per_day) if analytics else None,
            "time_zone": timezone.get_current_timezone_name(),
        }
        return TemplateResponse(request, "admin/slots/analytics.html", context)


def _bar_chart(days: list[dict], height: int = 200, bar: int = 18, gap: int = 4, left: int = 48) -> dict:
    """Geometry of an inline SVG bar chart (no JavaScript, nothing from a CDN), each day labelled with
    its weekday and month ("Tue 1 Dec")."""
    peak = max((d["count"] for d in days), default=0) or 1
    bars = []
    for index, day in enumerate(days):
        h, when = round(height * day["count"] / peak), date.fromisoformat(day["date"])
        label = f"{when:%a} {when.day} {when:%b}"
        x = left + index * (bar + gap)  # the labels, slanted, reach left of their bar
        bars.append({**day, "x": x, "middle": x + bar // 2, "y": height - h, "height": h, "label": label})
    return {"bars": bars, "width": left + len(days) * (bar + gap), "height": height, "bar": bar, "peak": peak}


@admin.register(Availability)
class AvailabilityAdmin(AuditTrailMixin, OrganisationScoped):
    """Any host's hours, edited through ``AvailabilityForm`` (the API's checks, ``slots.availability``), and the host's
    week as a picture: hours, published slots, active bookings (``?week=YYYY-MM-DD`` for another week)."""

    list_display = ["host", "time_zone", "lengths", "minimum_notice_minutes", "buffer_minutes", "updated_at"]
    search_fields = ["host__email", "host__name", "=host__id"]
    list_select_related = ["host"]
    form = AvailabilityForm
    readonly_fields = ["updated_at", "audit_trail"]
    change_form_template = "admin/slots/availability/change_form.html"

    @admin.display(description="Appointment lengths")
    def lengths(self, availability):
        return f"{lengths_text(availability.durations)} minutes"

    def get_fieldsets(self, request, obj=None):
        fields = [f for f in AvailabilityForm.Meta.fields if obj is None or f != "host"]
        if obj is None:
            return [(None, {"fields": fields})]
        return [
            (None, {"fields": ["organisation", *fields, "updated_at"]}),
            ("Audit trail", {"fields": ["audit_trail"], "classes": ["collapse"]}),
        ]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        return type("AvailabilityFormForRequest", (form,), {"request": request})

    def save_model(self, request, obj, form, change):
        form.adopt(obj)  # AvailabilityForm.clean() wrote it through availability_set

    def has_delete_permission(self, request, obj=None):
        return False  # a host with no hours is an empty document, set like any other

    def change_view(self, request, object_id, form_url="", extra_context=None):
        availability = self.get_object(request, object_id)
        if availability is not None:
            extra_context = {**(extra_context or {}), "week_picture": self.week_picture(availability, request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def week_picture(self, availability: Availability, request) -> str:
        """The host's week (``?week=YYYY-MM-DD``: the week from that day; by default this one, from Monday)."""
        now = timezone.now()
        today = now.astimezone(ZoneInfo(availability.time_zone)).date()
        first = today - timedelta(days=today.weekday())
        with contextlib.suppress(ValueError):
            first = min(max(date.fromisoformat(request.GET.get("week", "")), EARLIEST_DAY), LATEST_DAY)
        week = selectors.host_week(availability, first_day=first, now=now)
        context = {
            "zone": availability.time_zone,
            "this_week": today - timedelta(days=today.weekday()),
            "previous": first - timedelta(days=7),
            "next": first + timedelta(days=7),
            **_week_geometry(week, today=today),
        }
        return render_to_string("admin/slots/availability/week.html", context)


HOUR_PX = 56  # a 30-minute block is 28 px: two lines of its label, its name and its times
# A block's label (templates/admin/slots/availability/week.html): lines of 12 px inside 1 px of padding and
# 1 px of border above and below.
LINE_PX, FRAME_PX = 12, 4


def _week_geometry(week: list[tuple[date, list[selectors.WeekBlock]]], *, today: date) -> dict:
    """Where each block of the week picture goes, in pixels: the picture shows the hours from the earliest
    thing of the week to the latest (whole hours, at least 8 of them; 08:00 to 18:00 for an empty week), so
    an operator's day is drawn at a legible scale instead of 24 hours squeezed into one screen. Slots take
    the left half of a day, the bookings in them (and the host's own bookings elsewhere) the right half,
    on the host's hours; bookings of the same time (a slot with room for several) are one block."""
    blocks = [block for _, day in week for block in day]
    first = min((math.floor(b.start) for b in blocks), default=8)
    last = max((math.ceil(b.end) for b in blocks), default=18)
    if last - first < 8:
        first = max(0, min(first, last - 8))
        last = first + 8
    days = []
    for day, in_day in week:
        merged: dict[tuple[str, float, float], list[selectors.WeekBlock]] = {}
        for block in in_day:
            merged.setdefault((block.kind, block.start, block.end), []).append(block)
        drawn = []
        for (kind, start, end), same in merged.items():
            top, height = (start - first) * HOUR_PX, (end - start) * HOUR_PX
            # The id alone (the lane and colour say what it is; the title says it in words), so that it fits.
            name = f"#{same[0].number}" if len(same) == 1 else f"{len(same)} bookings"
            drawn.append(
                {
                    "kind": kind,
                    "title": "; ".join(b.label for b in same),
                    "name": "" if kind == "hours" else name,  # the hours are the background: no label
                    "times": f"{same[0].begins}\N{EN DASH}{same[0].ends}",
                    "lines": min(2, max(0, int(height) - FRAME_PX) // LINE_PX),  # what fits: name, then times
                    "top": top,
                    "height": height,
                }
            )
        days.append({"day": day, "today": day == today, "blocks": drawn})
    hours = [{"top": (hour - first) * HOUR_PX, "label": f"{hour:02d}:00"} for hour in range(first, last + 1)]
    return {
        "days": days,
        "hours": hours,
        "height": (last - first) * HOUR_PX,
        "hour_px": HOUR_PX,
        "half_hour_px": HOUR_PX // 2,
    }
