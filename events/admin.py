from itertools import groupby
from typing import Any, cast

from django import forms
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.postgres.aggregates import StringAgg
from django.db.models import Case, Count, IntegerField, Model, OuterRef, QuerySet, Subquery, When
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from core.admin import (
    AuditTrailMixin,
    ClaimAdmin,
    OrganisationScoped,
    ReadOnlyAdmin,
    ServiceActionsMixin,
    StateFilter,
    short_id,
)
from core.errors import DomainError
from core.organisations import access
from core.organisations.roles import Role
from events import queue, selectors
from events.models import Event, EventQueue, QueueEntry, SeatClaim, SeatHoldGroup, WaitlistEntry
from events.services import events, holds, rules, seat_holds, waitlist
from web.accounts.services import request_user
from web.exports import CsvExportMixin

PLAIN, SECTIONS = "plain", "sections"
# What the change form may change.
UPDATABLE = (
    "name",
    "event_date",
    "location",
    "hold_minutes",
    "queue_enabled",
    "admitted_per_minute",
    "admission_window_minutes",
)


class EventChangeForm(forms.ModelForm):
    """An event's details. The date is bounded as the API bounds it (``services.event_date_problem``:
    in the future, at most ten years ahead); a date left as it was (an event already past) may stay.
    The hold length is 1-60 minutes, as ``event_hold_minutes_range`` requires; the queue's rate and
    window are bounded by the model's validators, as its check constraints require."""

    hold_minutes = forms.IntegerField(
        min_value=rules.HOLD_MINUTES_RANGE[0],
        max_value=rules.HOLD_MINUTES_RANGE[1],
        initial=5,
        help_text="How long a seat hold lasts (1-60)",
    )

    class Meta:
        model = Event
        fields = ["name", "event_date", "location", "hold_minutes", *UPDATABLE[4:]]

    def clean_event_date(self):
        event_date = self.cleaned_data["event_date"]
        if self.instance.pk is None or "event_date" in self.changed_data:
            problem = rules.event_date_problem(event_date, now=timezone.now())
            if problem:
                raise forms.ValidationError(problem)
        return event_date


class EventCreateForm(EventChangeForm):
    """An event and its seat layout: plain S1…Sn from a total, or sections x rows x seats per row."""

    layout = forms.ChoiceField(
        choices=[(PLAIN, "Plain: S1…Sn"), (SECTIONS, "Sections x rows x seats per row: A-3-12")],
        initial=PLAIN,
        widget=forms.RadioSelect,
    )
    total_seats = forms.IntegerField(min_value=1, max_value=rules.MAX_SEATS_PER_EVENT, required=False)
    sections = forms.CharField(required=False, help_text="Comma-separated section names, e.g. A, B, C")
    rows = forms.IntegerField(min_value=1, max_value=1000, required=False, help_text="Rows per section")
    seats_per_row = forms.IntegerField(min_value=1, max_value=1000, required=False)

    class Meta(EventChangeForm.Meta):
        fields = ["organisation", "name", "event_date", "location", "hold_minutes", "sales_open"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("layout") == SECTIONS:
            names = [s.strip() for s in (data.get("sections") or "").split(",") if s.strip()]
            if not names or not data.get("rows") or not data.get("seats_per_row"):
                raise forms.ValidationError("A sections layout needs sections, rows and seats per row.")
            data["seat_layout"] = events.SeatLayout(tuple(names), data["rows"], data["seats_per_row"])
            try:
                data["seat_layout"].validate()
            except DomainError as error:
                raise forms.ValidationError(error.message) from error
            if data["seat_layout"].total > rules.MAX_SEATS_PER_EVENT:
                raise forms.ValidationError(f"At most {rules.MAX_SEATS_PER_EVENT} seats per event.")
        elif not data.get("total_seats"):
            self.add_error("total_seats", "A plain layout needs the number of seats.")
        return data


@admin.register(Event)
class EventAdmin(AuditTrailMixin, ServiceActionsMixin, OrganisationScoped):
    list_display = [
        "id",
        "name",
        "event_date",
        "location",
        "total_seats",
        "confirmed_seats",
        "held_seats",
        "available_seats",
        "sales_open",
        "waiting",
        "queue_enabled",
    ]
    list_filter = ["sales_open", "waitlist_enabled", "queue_enabled", "event_date"]
    search_fields = ["name", "location", "=id"]
    date_hierarchy = "event_date"
    actions = ["close_sales", "open_sales", "turn_waitlist_off", "turn_waitlist_on"]
    readonly_fields = [
        "sales_open",
        "waitlist_enabled",
        "waiting",
        "created_at",
        "seat_map",
        "queue_summary",
        "audit_trail",
    ]
    # The seat map first, where an operator looks: its legend counts the seats (available, held, booked,
    # of the total), so the counts need no rows of their own.
    fieldsets = [
        ("Seats", {"fields": ["seat_map"]}),
        (
            None,
            {"fields": ["organisation", "name", "event_date", "location", "hold_minutes", "sales_open", "created_at"]},
        ),
        (
            "Admission queue",
            {
                "fields": ["queue_enabled", "admitted_per_minute", "admission_window_minutes", "queue_summary"],
                "description": "On: seat holds need an admission from the queue (operators are exempt). "
                "The admit queues job lets the next people in, in join order, at this rate while sales are open.",
            },
        ),
        ("Waiting list", {"fields": ["waitlist_enabled", "waiting"]}),
        ("Audit trail", {"fields": ["audit_trail"], "classes": ["collapse"]}),
    ]

    def get_queryset(self, request):
        return self.scope(request, selectors.events_with_counts(now=timezone.now()))

    def get_object(self, request, object_id, from_field=None):
        """The event, with the lists of it its page links to: those the caller's role in its organisation sees
        (a staff member's page says how many wait, without a link to a list they may not open)."""
        event = super().get_object(request, object_id, from_field)
        event.lists_shown = self._lists_shown(request, event.organisation_id)
        return event

    def _lists_shown(self, request, organisation_id: int | None) -> set[type[Model]]:
        """The lists of an event's entries (waiting list, queue) the caller may open, in ``organisation_id``
        (None: in any of theirs)."""
        shown: set[type[Model]] = set()
        for model in (WaitlistEntry, QueueEntry):
            entries = cast(OrganisationScoped, self.admin_site.get_model_admin(model))
            if organisation_id is None:
                visible = entries.has_view_permission(request)
            else:
                visible = access.may_act(request_user(request), organisation_id, entries.view_role)
            if visible:
                shown.add(model)
        return shown

    def get_list_display(self, request):
        """The waiting count links to the waiting list when the caller may open it; else it is a number."""
        shown = WaitlistEntry in self._lists_shown(request, None)
        return [column if shown or column != "waiting" else "waiting_unlinked" for column in self.list_display]

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = EventCreateForm if obj is None else EventChangeForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [
                (None, {"fields": ["organisation", "name", "event_date", "location", "hold_minutes", "sales_open"]}),
                ("Seat layout", {"fields": ["layout", "total_seats", "sections", "rows", "seats_per_row"]}),
            ]
        return self.fieldsets

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else super().get_readonly_fields(request, obj)

    def has_delete_permission(self, request, obj=None):
        """Deleting an event would take its seats with it and leave no audit trail: operators close
        sales instead."""
        return False

    def save_model(self, request, obj, form, change):
        """Both through the services, never ``obj.save()``: a full save writes back every column of the
        row as the form read it, ``confirmed_seats`` and ``sales_open`` included, undoing a confirm,
        cancel or sales action that committed meanwhile."""
        data = form.cleaned_data
        if change:
            changed = {field: data[field] for field in UPDATABLE if field in form.changed_data}
            updated = events.event_update_details(event_id=obj.pk, actor=request.user, now=timezone.now(), **changed)
            for field in (*UPDATABLE, "confirmed_seats", "sales_open", "updated_at"):
                setattr(obj, field, getattr(updated, field))
            return
        created = events.event_create(
            organisation_id=data["organisation"].pk,
            name=data["name"],
            event_date=data["event_date"],
            location=data["location"],
            hold_minutes=data["hold_minutes"],
            sales_open=data["sales_open"],
            total_seats=None if data.get("seat_layout") else data["total_seats"],
            layout=data.get("seat_layout"),
            actor=request.user,
            now=timezone.now(),
        )
        obj.pk, obj.total_seats, obj.created_at = created.pk, created.total_seats, created.created_at
        obj._state.adding = False

    @admin.display(description="Queue now")
    def queue_summary(self, event):
        row = EventQueue.objects.filter(pk=event.pk).first()
        if row is None:
            return "Nobody has joined."
        counts = format_html(
            "{} joined, {} admitted, {} waiting", row.joined, row.admitted_through, row.joined - row.admitted_through
        )
        if QueueEntry not in getattr(event, "lists_shown", {QueueEntry}):
            return counts
        url = reverse("admin:events_queueentry_changelist") + f"?event__id__exact={event.pk}"
        return format_html('{}: <a href="{}">the entries</a>', counts, url)

    @admin.display(description="Held now")
    def held_seats(self, event):
        return event.held_seats

    @admin.display(description="Available now")
    def available_seats(self, event):
        return event.available_seats

    @admin.display(description="Waiting", ordering="waiting_count")
    def waiting(self, event):
        """The WAITING entries, linked to the event's list (positions, offers, removal)."""
        if WaitlistEntry not in getattr(event, "lists_shown", {WaitlistEntry}):
            return self.waiting_unlinked(event)
        url = reverse("admin:events_waitlistentry_changelist") + f"?event__id__exact={event.pk}"
        return format_html('<a href="{}">{} waiting</a>', url, event.waiting_count)

    @admin.display(description="Waiting", ordering="waiting_count")
    def waiting_unlinked(self, event):
        """The WAITING entries, for a role that does not open the waiting list."""
        return f"{event.waiting_count} waiting"

    @admin.display(description="Seat map")
    def seat_map(self, event):
        seats = selectors.seat_map(event=event, now=timezone.now())
        counts = {status: 0 for status in (selectors.AVAILABLE, selectors.HELD, selectors.BOOKED)}
        for seat in seats:
            counts[seat["status"]] += 1
        sections = [
            {
                "name": section or "Seats",
                "rows": [
                    {"row": row, "seats": list(row_seats)} for row, row_seats in groupby(in_section, lambda s: s["row"])
                ],
            }
            for section, in_section in groupby(seats, lambda s: s["section"])
        ]
        return mark_safe(
            render_to_string(
                "admin/events/seat_map.html", {"sections": sections, "counts": counts, "total": len(seats)}
            )
        )

    @admin.action(description="Close sales for the selected events", permissions=["change"])
    def close_sales(self, request, queryset):
        self._set_sales(request, queryset, sales_open=False)

    @admin.action(description="Open sales for the selected events", permissions=["change"])
    def open_sales(self, request, queryset):
        self._set_sales(request, queryset, sales_open=True)

    @admin.action(description="Turn the waiting list off for the selected events", permissions=["change"])
    def turn_waitlist_off(self, request, queryset):
        self._set_waitlist(request, queryset, enabled=False)

    @admin.action(description="Turn the waiting list on for the selected events", permissions=["change"])
    def turn_waitlist_on(self, request, queryset):
        self._set_waitlist(request, queryset, enabled=True)

    def _set_sales(self, request, queryset, *, sales_open: bool) -> None:
        self.run_service(
            request,
            queryset,
            lambda event: events.event_sales_set(
                event_id=event.pk, sales_open=sales_open, actor=request.user, now=timezone.now()
            ),
            f"had sales {'opened' if sales_open else 'closed'}",
        )

    def _set_waitlist(self, request, queryset, *, enabled: bool) -> None:
        kept = "" if enabled else " (those on it keep their place and are still offered seats)"
        self.run_service(
            request,
            queryset,
            lambda event: waitlist.waitlist_set(
                event_id=event.pk, enabled=enabled, actor=request.user, now=timezone.now()
            ),
            f"had the waiting list turned {'on' if enabled else 'off'}{kept}",
        )


@admin.register(SeatHoldGroup)
class SeatHoldGroupAdmin(CsvExportMixin, ClaimAdmin):
    """Holds and bookings: find one by its hold or booking id (or the user's email) and act on it
    through the actions, which call the services. Rows are never edited. Exported (an event's confirmed
    bookings: the door list), each booking with its seat codes and its buyer."""

    export_columns = [
        ("booking", "booking_group_id"),
        ("hold", "id"),
        ("event", "event__name"),
        ("event date", "event__event_date"),
        ("state", "effective_state"),
        ("seats", "seat_count"),
        ("seat codes", "seat_codes"),
        ("buyer email", "user__email"),
        ("buyer name", "user__name"),
        ("confirmed at", "confirmed_at"),
        ("cancelled at", "cancelled_at"),
    ]

    cap = holds.SEAT_HOLDS.cap
    organisation_field = "event__organisation"
    list_display = ["hold", "booking", "event", "user", "state_now", "seat_count", "hold_expires", "created_at"]
    list_filter = [StateFilter, ("event", admin.RelatedOnlyFieldListFilter), "created_at"]
    search_fields = ["=id", "=booking_group_id", "user__email", "user__name", "=idempotency_key"]
    list_select_related = ["event", "user"]
    date_hierarchy = "created_at"
    actions = ["cancel_bookings", "release_holds", "expire_now"]

    def export_queryset(self, queryset: QuerySet) -> QuerySet:
        """Each group's seat codes, in layout order, one subquery per row (an index on the group)."""
        codes = (
            SeatClaim.objects.filter(group=OuterRef("pk"))
            .order_by()
            .values("group")
            .annotate(codes=StringAgg("seat__code", " ", order_by=("seat__section", "seat__row", "seat__number")))
            .values("codes")
        )
        return queryset.annotate(seat_codes=Subquery(codes))

    readonly_fields = [
        "id",
        "booking_group_id",
        "event",
        "user",
        "state_now",
        "seat_codes",
        "seat_count",
        "hold_expires",
        "idempotency_key",
        "created_at",
        "updated_at",
        "confirmed_at",
        "cancelled_at",
        "reminded_at",
        "audit_trail",
    ]
    fields = tuple(readonly_fields)

    def get_audit_subject(self, group):
        return rules.hold_subject(group)

    @admin.display(description="Hold", ordering="id")
    def hold(self, group):
        return short_id(group.pk)

    @admin.display(description="Booking", ordering="booking_group_id")
    def booking(self, group):
        return short_id(group.booking_group_id)

    @admin.display(description="Seats")
    def seat_codes(self, group):
        return ", ".join(selectors.group_seat_codes(group))

    @admin.action(description="Cancel selected bookings (seats free again)", permissions=["change"])
    def cancel_bookings(self, request, queryset):
        self.run_service(
            request,
            queryset.exclude(booking_group_id=None),
            lambda g: seat_holds.seat_booking_cancel(
                booking_group_id=g.booking_group_id, user=request.user, now=timezone.now()
            ),
            "cancelled",
        )

    @admin.action(description="Release selected holds", permissions=["change"])
    def release_holds(self, request, queryset):
        self.run_service(
            request,
            queryset,
            lambda g: seat_holds.seat_hold_release(
                event_id=g.event_id, hold_group_id=g.pk, user=request.user, now=timezone.now()
            ),
            "released",
        )

    @admin.action(description="Expire selected holds now", permissions=["change"])
    def expire_now(self, request, queryset):
        self.run_service(
            request,
            queryset,
            lambda g: seat_holds.seat_hold_expire(hold_group_id=g.pk, user=request.user, now=timezone.now()),
            "expired",
        )


@admin.register(WaitlistEntry)
class WaitlistEntryAdmin(CsvExportMixin, AuditTrailMixin, ServiceActionsMixin, ReadOnlyAdmin, OrganisationScoped):
    """Each event's waiting list, in join order: who waits for how many seats, their position, the offer
    (a hold) an entry was made. Operators remove an entry through the action (a confirmation page
    first), which calls the service: the entries behind move up, and the next may be offered seats."""

    organisation_field = "event__organisation"
    view_role = Role.MANAGER  # waiting lists are the manager's rung
    list_display = [
        "id",
        "event",
        "position",
        "user",
        "quantity",
        "state_now",
        "offer",
        "offer_expires_at",
        "created_at",
    ]
    list_filter = ["state", ("event", admin.RelatedOnlyFieldListFilter), "created_at"]
    search_fields = ["=id", "user__email", "user__name", "=hold_group__id"]
    export_columns = [
        ("entry", "id"),
        ("event", "event__name"),
        ("user email", "user__email"),
        ("user name", "user__name"),
        ("quantity", "quantity"),
        ("state", "state"),
        ("offer (hold)", "hold_group_id"),
        ("offer expires at", "offer_expires_at"),
        ("joined at", "created_at"),
    ]
    list_select_related = ["event", "user"]
    ordering = ["event", "id"]
    actions = ["remove_entries"]
    readonly_fields = [
        "id",
        "event",
        "user",
        "quantity",
        "state_now",
        "position",
        "offer",
        "offer_expires_at",
        "idempotency_key",
        "created_at",
        "updated_at",
        "audit_trail",
    ]
    fields = tuple(readonly_fields)

    def get_queryset(self, request):
        ahead = (
            WaitlistEntry.objects.filter(event=OuterRef("event"), state="WAITING", id__lte=OuterRef("id"))
            .order_by()
            .values("event")
            .annotate(n=Count("*"))
            .values("n")
        )  # on waitlist_entry_waiting_idx: as many rows as are ahead
        waiting_position = Subquery(ahead, output_field=IntegerField())
        return super().get_queryset(request).annotate(position_now=Case(When(state="WAITING", then=waiting_position)))

    def has_change_permission(self, request, obj=None):
        """The page is read-only; the removal action needs the change permission (given to operators)."""
        return obj is None and OrganisationScoped.has_change_permission(self, request)

    def get_audit_subject(self, entry):
        return waitlist.waitlist_entry_subject(entry)

    @admin.display(description="Position", ordering="id")
    def position(self, entry):
        return entry.position_now

    @admin.display(description="State", ordering="state")
    def state_now(self, entry):
        """As the API reads it: an offer whose hold is overdue is EXPIRED (the sweep has not run yet)."""
        if entry.state == "OFFERED" and entry.offer_expires_at and entry.offer_expires_at <= timezone.now():
            return "EXPIRED (offer overdue, sweep pending)"
        return entry.state

    @admin.display(description="Offer (hold)")
    def offer(self, entry):
        if entry.hold_group_id is None:
            return None
        url = reverse("admin:events_seatholdgroup_change", args=[entry.hold_group_id])
        return format_html('<a href="{}">{}</a>', url, short_id(entry.hold_group_id))

    @admin.action(description="Remove selected entries from the waiting list", permissions=["change"])
    def remove_entries(self, request, queryset):
        """A confirmation page first; removed entries become LEFT, recorded as the operator's act."""
        if request.POST.get("confirmed") != "yes":
            return TemplateResponse(
                request,
                "admin/events/waitlistentry/remove_confirmation.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Remove from the waiting list?",
                    "entries": queryset.select_related("event", "user"),
                    "action": "remove_entries",
                    "action_checkbox_name": ACTION_CHECKBOX_NAME,
                    "opts": self.model._meta,
                },
            )
        self.run_service(
            request,
            queryset,
            lambda e: waitlist.waitlist_leave(
                event_id=e.event_id, entry_id=e.pk, user=request.user, now=timezone.now()
            ),
            "removed from the waiting list",
        )
        return None


@admin.register(QueueEntry)
class QueueEntryAdmin(AuditTrailMixin, ReadOnlyAdmin, OrganisationScoped):
    """The admission queues: each entry with its place, in join order per event. Only the services
    write them (a join, the admit queues job); operators watch."""

    organisation_field = "event__organisation"
    view_role = Role.MANAGER  # queues are the manager's rung
    list_display = ["number", "event", "user", "state_now", "position", "joined_at", "admitted_until"]
    list_filter = ["state", ("event", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["user__email", "user__name", "=token"]
    list_select_related = ["event", "user"]
    ordering = ["event", "number"]
    readonly_fields = [
        "event",
        "user",
        "number",
        "state_now",
        "position",
        "joined_at",
        "admitted_at",
        "admitted_until",
        "audit_trail",
    ]
    fields = tuple(readonly_fields)

    def get_queryset(self, request):
        through = EventQueue.objects.filter(pk=OuterRef("event_id")).values("admitted_through")
        return super().get_queryset(request).annotate(through=Subquery(through))

    def get_audit_subject(self, entry):
        return queue.queue_subject(entry.pk)

    @admin.display(description="State now", ordering="state")
    def state_now(self, entry):
        return entry.state_at(timezone.now())

    @admin.display(description="Position")
    def position(self, entry):
        """1 for the next to be admitted; 0 once admitted."""
        return queue.with_position(entry, entry.through).position
