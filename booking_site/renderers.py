"""JSON responses rendered by orjson (REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"]).

The bytes are the ones DRF's own renderer writes — compact, UTF-8, DRF's formatting of times, decimals
and lazy strings — at a fraction of the CPU (docs/decisions/0006-request-floor.md). The browsable
API's indented view still goes through DRF's renderer.
"""

import orjson
from rest_framework import renderers
from rest_framework.utils.encoders import JSONEncoder

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
