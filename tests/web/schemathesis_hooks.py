"""schemathesis's check of the codes (tests/web/test_schema_fuzz.py loads it with SCHEMATHESIS_HOOKS).

An error response's JSON Schema is the one ``Error`` model, whose ``code`` is any string; the codes an
operation's status can carry are listed beside it, in ``x-error-codes`` (web.schema.ERROR_CODES,
docs/decisions/0018-schema-for-clients.md). schemathesis validates the former by itself; this holds the
server to the latter, as the enum in the schema once did. No Django here: it runs in schemathesis's process.
"""

import schemathesis

ERROR_CODES = "x-error-codes"  # web.schema.ERROR_CODES (tests/web/test_schema.py pins it)


@schemathesis.check
def error_code_listed(ctx, response, case) -> None:
    """An error's ``error.code`` is one that the operation lists for that status."""
    documented = case.operation.definition.raw.get("responses", {}).get(str(response.status_code), {})
    if ERROR_CODES not in documented:
        return  # not an error of the envelope, or a status the schema does not list (status_code_conformance)
    code = response.json()["error"]["code"]
    if code not in documented[ERROR_CODES]:
        raise AssertionError(
            f"{case.operation.label} answered {response.status_code} `{code}`, "
            f"which its schema does not list: {', '.join(documented[ERROR_CODES])}"
        )
