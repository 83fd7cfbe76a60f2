"""JSON responses rendered by orjson (REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"]).

The bytes are the ones DRF's own renderer writes — compact, UTF-8, DRF's formatting of times, decimals
and lazy strings — at a fraction of the CPU (docs/decisions/0006-request-floor.md). The browsable
API's indented view still goes through DRF's renderer; its forms are each endpoint's input serializer.
"""

import json
from typing import Any

import orjson
from rest_framework import renderers, serializers
from rest_framework.fields import empty
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import override_method
from rest_framework.utils.encoders import JSONEncoder
from rest_framework.utils.field_mapping import ClassLookupDict

# Times, decimals, lazy translations and the rest go to DRF's encoder, so they read exactly as before.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS
_default = JSONEncoder().default


class JSONRenderer(renderers.JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        if self.get_indent(accepted_media_type, renderer_context or {}):
            return super().render(data, accepted_media_type, renderer_context)
        return orjson.dumps(data, default=_default, option=_OPTIONS)


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation (REST_FRAMEWORK["DEFAULT_CONTENT_NEGOTIATION_CLASS"]), answered at once for what
    API clients send: no ``Accept`` header, ``*/*``, or exactly the first renderer's media type, with no
    ``?format=`` and no format suffix. DRF's own answer to those is always the first renderer with its
    media type; parsing the header into media types and ranking them was 5 % of a ``GET
    /api/users/me``. Anything else (the browsable API's ``text/html``, ``?format=``, ``indent=``) goes
    through DRF's negotiation."""

    def select_renderer(self, request, renderers, format_suffix=None):
        if renderers and not format_suffix and not request.META.get("QUERY_STRING"):
            first, accept = renderers[0], request.META.get("HTTP_ACCEPT", "*/*")
            if accept in ("*/*", first.media_type):
                return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)


class HTMLFormRenderer(renderers.HTMLFormRenderer):
    """The browsable API's form widgets: a list is a text input (comma-separated, or a JSON list) and a
    JSON object a textarea, which ``StrictSerializer`` parses back; DRF renders neither ("not supported")."""

    _styles: dict[Any, dict[str, str]] = {
        **renderers.HTMLFormRenderer.default_style.mapping,
        serializers.ListField: {
            "base_template": "input.html",
            "input_type": "text",
            "placeholder": "comma-separated, or a JSON list",
        },
        serializers.DictField: {"base_template": "textarea.html"},
    }
    default_style = ClassLookupDict(_styles)


class BrowsableAPIRenderer(renderers.BrowsableAPIRenderer):
    """The browsable API, whose forms are each method's input serializer — the body its schema documents
    (``@extend_schema(request=...)``) — not the view's output serializer, with the defaults filled in."""

    form_renderer_class = HTMLFormRenderer
    accepted_media_type: str  # set by render(), as in DRF's own renderer

    def get_rendered_html_form(self, data, view, method, request):
        serializer = self._input_serializer(view, method, request)
        if serializer is None:
            return super().get_rendered_html_form(data, view, method, request)
        with override_method(view, request, method) as request:
            if not self.show_form_for_method(view, method, request, None):
                return None
        return self.render_form_for_serializer(serializer)

    def render_form_for_serializer(self, serializer):
        data = serializer.data
        _empty_lists_blank(serializer, data)
        return self.form_renderer_class().render(
            data, self.accepted_media_type, {"style": {"template_pack": "rest_framework/horizontal"}}
        )

    def get_raw_data_form(self, data, view, method, request):
        form = super().get_raw_data_form(data, view, method, request)
        serializer = self._input_serializer(view, method, request)
        if form is not None and serializer is not None:
            form.fields["_content"].initial = json.dumps(serializer.data, indent=4, cls=JSONEncoder)
        return form

    @staticmethod
    def _input_serializer(view, method: str, request) -> serializers.Serializer | None:
        """An unbound instance of the serializer the schema names as ``method``'s body (one without
        fields when it takes none), its defaults as initial values; None for a method the schema does
        not annotate."""
        schema_class = getattr(getattr(view, method.lower(), None), "kwargs", {}).get("schema")
        if schema_class is None or method not in ("POST", "PUT", "PATCH"):
            return None
        schema = schema_class()
        schema.view, schema.method = view, method
        body = schema.get_request_serializer()
        if body is None:
            return serializers.Serializer()
        if isinstance(body, serializers.BaseSerializer):
            body = type(body)
        if not (isinstance(body, type) and issubclass(body, serializers.Serializer)):
            return None
        serializer = body(context={"request": request, "view": view})
        _as_on_the_wire(serializer)
        return serializer


def _as_on_the_wire(serializer: serializers.Serializer) -> None:
    """Each field labelled with its JSON name ("carId", not DRF's "Carid"), its default as its initial
    value; nested serializers likewise."""
    for name, field in serializer.fields.items():
        field.label = name
        if field.default is not empty:
            field.initial = field.default
        if isinstance(field, serializers.Serializer):
            _as_on_the_wire(field)


def _empty_lists_blank(serializer: serializers.Serializer, data: dict) -> None:
    """An empty list's input shows its placeholder, not "[]" (which a form post would send back)."""
    for name, field in serializer.fields.items():
        if isinstance(field, serializers.ListField) and not data.get(name):
            data[name] = ""
        elif isinstance(field, serializers.Serializer) and isinstance(data.get(name), dict):
            _empty_lists_blank(field, data[name])
