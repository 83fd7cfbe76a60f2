"""Request parsing shared by every endpoint (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"])."""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, refusing what PostgreSQL cannot store or Python cannot walk: NUL characters
    and lone surrogates anywhere in the document (text and jsonb reject them), and nesting deeper than
    ``max_depth`` (json.loads would otherwise die of RecursionError). All are 400s, like any bad JSON."""

    max_depth = 32

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON nested too deeply.") from None
        self._check(data)
        return data

    def _check(self, data) -> None:
        pending = [(data, 1)]
        while pending:
            value, depth = pending.pop()
            if depth > self.max_depth:
                raise ParseError(f"JSON nested deeper than {self.max_depth} levels.")
            if isinstance(value, dict):
                pending.extend((k, depth) for k in value)
                pending.extend((v, depth + 1) for v in value.values())
            elif isinstance(value, list):
                pending.extend((v, depth + 1) for v in value)
            elif isinstance(value, str) and not storable_text(value):
                raise ParseError("Text contains a NUL character or a lone surrogate.")


def storable_text(value: str) -> bool:
    """Text PostgreSQL can store: no NUL character, and valid UTF-8 (no lone surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
