"""CSV exports of the admin's lists (docs/decisions/0019-calendar-and-exports.md): what an operator takes
to the door or to a spreadsheet.

``CsvExportMixin`` is declared once; each admin mixes it in and declares its ``export_columns``. The list
page gets an "Export CSV" link carrying its query string, so the file has exactly the rows the list
shows — its filters, its search, its order — on every page, not only the first; and an action exports
the rows ticked. The file is streamed: the rows come from a server-side cursor ``EXPORT_CHUNK_SIZE`` at
a time and leave as they are written, so 100,000 rows take the memory of one chunk.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone

# What a spreadsheet reads as the start of a formula (OWASP, CSV injection): such a text cell is
# written with a leading apostrophe, which spreadsheets show as text and do not evaluate.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FLUSH_AT = 64 * 1024  # characters of CSV gathered before they are sent on


def cell(value: Any) -> Any:
    """One value as the CSV writes it: a formula-looking text defused, a time in the operators' zone."""
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_STARTS) else value
    if isinstance(value, datetime):
        return timezone.localtime(value).isoformat()
    if isinstance(value, list | tuple):
        return cell(" ".join(str(item) for item in value))
    return "" if value is None else value


def csv_lines(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """The CSV text of ``header`` and ``rows``, in pieces of about ``FLUSH_AT`` characters."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([cell(name) for name in header])
    for row in rows:
        writer.writerow([cell(value) for value in row])
        if buffer.tell() >= FLUSH_AT:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


class CsvExportMixin:
    """Export an admin list as CSV. Declare ``export_columns``: ``(header, lookup)`` pairs, a lookup being
    what ``values_list`` takes (``"user__email"``, or an annotation ``export_queryset`` adds)."""

    export_columns: Sequence[tuple[str, str]]

    if TYPE_CHECKING:  # from the ModelAdmin it is mixed into
        model: type[Model]
        admin_site: admin.AdminSite

        def get_changelist_instance(self, request) -> Any: ...
        def get_action(self, action) -> Any: ...
        def has_view_permission(self, request, obj=None) -> bool: ...

    def export_queryset(self, queryset: QuerySet) -> QuerySet:
        """The rows to write, given the list's: add here the annotations a column reads."""
        return queryset

    def _export_url_name(self) -> str:
        return f"{self.model._meta.app_label}_{self.model._meta.model_name}_export"

    def get_urls(self):
        export = path("export.csv", self.admin_site.admin_view(self.export_view), name=self._export_url_name())
        return [export, *super().get_urls()]  # type: ignore[misc]  # a mixin of ModelAdmin

    def changelist_view(self, request, extra_context=None):
        url = reverse(f"admin:{self._export_url_name()}")
        context = {"export_csv_url": f"{url}?{request.GET.urlencode()}" if request.GET else url}
        return super().changelist_view(request, extra_context={**context, **(extra_context or {})})  # type: ignore[misc]

    def get_actions(self, request):
        actions = super().get_actions(request)  # type: ignore[misc]  # a mixin of ModelAdmin
        if self.has_view_permission(request):
            actions["export_csv"] = self.get_action("export_csv")
        return actions

    def export_view(self, request):
        """The list as the operator sees it (its query string: filters, search, order), every page of it."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseRedirect(
                reverse(f"admin:{self.model._meta.app_label}_{self.model._meta.model_name}_changelist") + "?e=1"
            )
        return self._csv(changelist.get_queryset(request))

    @admin.action(description="Export selected as CSV")
    def export_csv(self, request, queryset):
        if not self.has_view_permission(request):  # the action is listed only then; a forged POST is refused
            raise PermissionDenied
        return self._csv(queryset)

    def _csv(self, queryset: QuerySet) -> StreamingHttpResponse:
        headers, lookups = zip(*self.export_columns, strict=True)
        rows = self.export_queryset(queryset).values_list(*lookups).iterator(chunk_size=settings.EXPORT_CHUNK_SIZE)
        response = StreamingHttpResponse(csv_lines(headers, rows), content_type="text/csv; charset=utf-8")
        stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="{self.model._meta.model_name}-{stamp}.csv"'
        return response
