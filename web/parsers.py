"""Request parsing shared by every endpoint (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"])."""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 32


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, refusing what PostgreSQL cannot store or Python cannot walk: NUL characters
    and lone surrogates anywhere in the document (text and jsonb reject them), and nesting deeper than
    ``MAX_DEPTH`` (json.loads would otherwise die of RecursionError). All are 400s, like any bad JSON."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON nested too deeply.") from None
        problem = unstorable(data)
        if problem:
            raise ParseError(problem)
        return data


def unstorable(data) -> str | None:
    """What keeps a JSON value out of PostgreSQL (a NUL, a lone surrogate, runaway nesting), or None.
    Walked without recursion. Also for JSON fields that reach a serializer by another parser (a form)."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_DEPTH:
            return f"JSON nested deeper than {MAX_DEPTH} levels."
        if isinstance(value, dict):
            pending.extend((key, depth) for key in value)
            pending.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list | tuple):
            pending.extend((child, depth + 1) for child in value)
        elif isinstance(value, str) and not storable_text(value):
            return "Text contains a NUL character or a lone surrogate."
    return None


def storable_text(value: str) -> bool:
    """Text PostgreSQL can store: no NUL character, and valid UTF-8 (no lone surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
