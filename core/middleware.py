"""The project's own middleware: request ids — taken from ``X-Request-ID`` (or made up), returned in the
response, put on every log line and on every audit event written while the request runs — and the
admin-only flash messages."""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from django.contrib.messages.middleware import MessageMiddleware

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def is_api(request) -> bool:
    return request.path.startswith("/api/")


def current_request_id() -> str | None:
    return request_id_var.get()


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _VALID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request_id
        return response


class RequestIdLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class AdminMessageMiddleware(MessageMiddleware):
    """Django's flash messages, for the pages that show them (the admin). API requests never read or
    write them, and setting up their storage was a tenth of the CPU of a small GET."""

    def process_request(self, request):
        if not is_api(request):
            super().process_request(request)
