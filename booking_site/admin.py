from django.contrib import admin

from booking_site.models import IdempotencyRecord


class ReadOnlyAdmin(admin.ModelAdmin):
    """An admin page for rows that only the services write: operators look, never edit."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "key", "method", "path", "response_status", "created_at", "completed_at"]
    list_filter = ["method", "response_status", "created_at"]
    search_fields = ["=key", "user__email", "path"]
    list_select_related = ["user"]
