from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from core.admin import PlatformAdmin
from web.accounts.models import User


@admin.register(User)
class UserAdmin(DjangoUserAdmin, PlatformAdmin):
    list_display = ["id", "username", "email", "name", "roles", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_active", "roles"]
    search_fields = ["username", "email", "name"]
    fieldsets = [
        *(DjangoUserAdmin.fieldsets or ()),
        ("Booking", {"fields": ["name", "roles"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["username", "email", "name", "roles", "password1", "password2"]}),
    ]
