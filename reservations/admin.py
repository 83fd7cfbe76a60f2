from django.contrib import admin
from django.db.models import OuterRef, Subquery
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from core.admin import AuditTrailMixin, ClaimAdmin, OrganisationScoped, StateFilter
from reservations import services
from reservations.models import Car, Reservation
from reservations.selectors import reservations_with_effective_state
from web.exports import CsvExportMixin


@admin.register(Car)
class CarAdmin(AuditTrailMixin, OrganisationScoped):
    list_display = ["id", "label", "make", "model", "organisation", "dealer_id", "status", "current_reservation"]
    list_filter = ["status", "dealer_id"]
    search_fields = ["label", "make", "model", "=id"]
    readonly_fields = ["created_at", "updated_at", "current_reservation", "audit_trail"]
    fields = [
        "organisation",
        "dealer_id",
        "label",
        "make",
        "model",
        "status",
        "current_reservation",
        "created_at",
        "updated_at",
        "audit_trail",
    ]

    def get_queryset(self, request):
        current = Reservation.objects.active(now=timezone.now()).filter(car=OuterRef("pk")).order_by("-id")
        return (
            super()
            .get_queryset(request)
            .annotate(
                current_id=Subquery(current.values("id")[:1]),
                current_state=Subquery(current.values("state")[:1]),
                current_until=Subquery(current.values("expires_at")[:1]),
            )
        )

    def save_model(self, request, obj, form, change):
        """Cars are written by the services, so the change is locked and audited like any other."""
        fields = {name: form.cleaned_data[name] for name in services.CAR_FIELDS}
        if change:
            saved = services.car_update(car_id=obj.pk, actor=request.user, **fields)
        else:
            saved = services.car_create(
                organisation_id=form.cleaned_data["organisation"].pk, actor=request.user, **fields
            )
        obj.pk, obj.created_at, obj.updated_at = saved.pk, saved.created_at, saved.updated_at

    @admin.display(description="Current reservation")
    def current_reservation(self, car):
        if getattr(car, "current_id", None) is None:
            return "—"
        url = reverse("admin:reservations_reservation_change", args=[car.current_id])
        until = f" until {timezone.localtime(car.current_until):%Y-%m-%d %H:%M}" if car.current_state == "HELD" else ""
        return format_html('<a href="{}">#{} {}{}</a>', url, car.current_id, car.current_state, until)


@admin.register(Reservation)
class ReservationAdmin(CsvExportMixin, ClaimAdmin):
    """Operators look and act through the actions (which call the services); rows are never edited."""

    cap = services.RESERVATIONS.cap
    organisation_field = "car__organisation"
    list_display = ["id", "car", "buyer", "state_now", "hold_expires", "created_at", "updated_at"]
    list_filter = [StateFilter, ("car", admin.RelatedOnlyFieldListFilter), "created_at"]
    search_fields = ["buyer__email", "buyer__name", "buyer__username", "=id", "=idempotency_key"]
    export_columns = [
        ("reservation", "id"),
        ("car", "car_id"),
        ("car label", "car__label"),
        ("buyer email", "buyer__email"),
        ("buyer name", "buyer__name"),
        ("state", "effective_state"),
        ("expires at", "expires_at"),
        ("created at", "created_at"),
        ("updated at", "updated_at"),
    ]
    list_select_related = ["car", "buyer"]
    date_hierarchy = "created_at"
    actions = ["cancel", "expire_now"]
    readonly_fields = [
        "car",
        "buyer",
        "state_now",
        "hold_expires",
        "idempotency_key",
        "created_at",
        "updated_at",
        "audit_trail",
    ]
    fields = tuple(readonly_fields)  # the page shows these, "State" once, not the stored state beside it

    def get_queryset(self, request):
        return self.scope(request, reservations_with_effective_state(now=timezone.now()).select_related("car", "buyer"))

    @admin.action(description="Cancel selected held reservations", permissions=["change"])
    def cancel(self, request, queryset):
        self.run_service(
            request,
            queryset,
            lambda r: services.reservation_cancel(reservation_id=r.pk, user=request.user, now=timezone.now()),
            "cancelled",
        )

    @admin.action(description="Expire selected held reservations now", permissions=["change"])
    def expire_now(self, request, queryset):
        self.run_service(
            request,
            queryset,
            lambda r: services.reservation_expire(reservation_id=r.pk, user=request.user, now=timezone.now()),
            "expired",
        )
