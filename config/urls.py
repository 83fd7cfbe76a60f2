from importlib import import_module

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path, re_path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.views import ApiRoot, Health, Ready, metrics_export
from core.errors import page_not_found


class IdConverter:
    """Integer ids that fit a bigint: a longer number is a 404, never a database error."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(IdConverter, "id")

handler400 = "core.errors.bad_request"
handler404 = "core.errors.page_not_found"
handler500 = "core.errors.server_error"


def _patterns(module: str) -> list[URLPattern | URLResolver]:
    """A domain's API routes, spliced into the API's list rather than included: an ``include("")``
    per domain is a resolver of its own, whose miss on every route of the domains before the one asked
    for raised and caught a Resolver404 and built its list of tried patterns, on every request."""
    return import_module(module).urlpatterns


api: list[URLPattern | URLResolver] = [
    path("", ApiRoot.as_view(), name="api-root"),
    path("health", Health.as_view(), name="health"),
    path("health/ready", Ready.as_view(), name="health-ready"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    *_patterns("web.accounts.api.urls"),
    *_patterns("web.organisations.api.urls"),
    *_patterns("reservations.api.urls"),
    *_patterns("events.api.urls"),
    *_patterns("slots.api.urls"),
    *_patterns("web.webhooks.api.urls"),
    re_path(r"^.*$", page_not_found),  # an unknown /api/ path answers in the envelope, DEBUG or not
]

urlpatterns = [  # the API first: Django tries the patterns in order, and nearly every request is one
    path("api/", include(api)),
    path("admin/", admin.site.urls),
    path("api-auth/", include("rest_framework.urls")),
    path("metrics", metrics_export, name="prometheus-django-metrics"),
]

admin.site.site_header = "booking_site operations"
admin.site.site_title = "booking_site"
admin.site.index_title = "Back office"
admin.site.site_url = "/api/"  # "View site": the API root, which links the docs
# The lists need the width (every column at 1,400 px); the breadcrumbs and the index lead everywhere.
admin.site.enable_nav_sidebar = False
