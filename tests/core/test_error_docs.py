"""The error codes and ``details`` keys the docs promise (README's error table, docs/contract.md §3.2 and
the ``details.x`` the contract names anywhere) are the ones the code can answer: every ``DomainError``
subclass, DRF's mapped exceptions, the envelopes written in ``booking_site`` and the ``details={...}``
each raise passes. The next drift between them fails here."""

import ast
import re
from pathlib import Path

from django.conf import settings
from django.urls import get_resolver

from core.errors import _DRF_CODES, DomainError

SOURCES = ["config", "core", "web", "ops", "reservations", "events", "slots"]
CODE = re.compile(r"`([a-z]+(?:_[a-z]+)*)`")
STATUS_AND_CODE = re.compile(r"\b([1-5][0-9]{2}) `([a-z]+(?:_[a-z]+)*)`")  # "409 `slot_full`"
STATUSES = re.compile(r"^\| (\d{3}(?: / \d{3})*) \|")
DOCUMENTED_DETAILS = re.compile(
    r"`(?P<code>[a-z_]+)`[^`|]{0,12}`details\.(?P<key>\w+)`(?P<more>(?:,? (?:and )?`\w+`)*)"
)


def _subclasses(cls) -> set[type[DomainError]]:
    return {cls, *(sub for child in cls.__subclasses__() for sub in _subclasses(child))}


def _raisable() -> dict[str, set[int]]:
    """Every code the code can answer, with its statuses (none known for a hand-written envelope)."""
    get_resolver().resolve("/api/")  # imports every view, so every domain's services and their errors
    abstract = {DomainError.code, "conflict"}  # the bases: only their subclasses are raised
    codes: dict[str, set[int]] = {}
    for cls in _subclasses(DomainError):
        if cls.code not in abstract:
            codes.setdefault(cls.code, set()).add(cls.status)
    for _, status, code in _DRF_CODES:
        codes.setdefault(code, set()).add(status)
    for call, _ in _calls():
        if _name(call.func) == "envelope" and call.args and isinstance(call.args[0], ast.Constant):
            codes.setdefault(call.args[0].value, set())
    return codes


def _raised_details() -> dict[str, set[str]]:
    """Code → the ``details`` keys some raise of it passes (a dict literal, ``details={...}``, or an
    envelope's third argument)."""
    code_of = {cls.__name__: cls.code for cls in _subclasses(DomainError)}
    found: dict[str, set[str]] = {}
    for call, owner in _calls():
        name = _name(call.func)
        code = code_of.get(name) or (code_of.get(owner) if name in ("cls", "__init__") else None)
        details = next((k.value for k in call.keywords if k.arg == "details"), None)
        if name == "envelope" and len(call.args) == 3 and isinstance(call.args[0], ast.Constant):
            code, details = call.args[0].value, call.args[2]
        if code and isinstance(details, ast.Dict):
            found.setdefault(code, set()).update(k.value for k in details.keys if isinstance(k, ast.Constant))
    return found


def _calls():
    """(call, the class it is written in or None) for every call in the product's code."""
    for folder in SOURCES:
        for path in (Path(settings.BASE_DIR) / folder).rglob("*.py"):
            if "migrations" not in path.parts:
                yield from _calls_in(ast.parse(path.read_text()), None)


def _calls_in(node, owner):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Call):
            yield child, owner
        yield from _calls_in(child, child.name if isinstance(child, ast.ClassDef) else owner)


def _name(func) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _section(path: str, start: str) -> str:
    text = (Path(settings.BASE_DIR) / path).read_text()
    after = text[text.index(start) :]
    return after[: after.index("\n###", 1)]


def _table(path: str, start: str) -> dict[str, set[int]]:
    """The error table after ``start``: code → the statuses of its row."""
    rows: dict[str, set[int]] = {}
    for line in _section(path, start).splitlines():
        statuses = STATUSES.match(line)
        if statuses:
            for code in CODE.findall(line[statuses.end() :]):
                rows.setdefault(code, set()).update(int(s) for s in statuses[1].split(" / "))
    return rows


README_TABLE = ("README.md", "Every error has one shape")
CONTRACT_TABLE = ("docs/contract.md", "### §3.2 Errors")


def test_every_code_in_the_readme_table_is_one_the_code_answers_with_that_status():
    raisable = _raisable()
    for code, statuses in _table(*README_TABLE).items():
        assert code in raisable, f"README documents {code}, which nothing raises"
        assert not raisable[code] or raisable[code] & statuses, f"README: {code} is {raisable[code]}, not {statuses}"


def test_the_contract_table_lists_exactly_the_codes_the_code_answers():
    raisable, documented = _raisable(), _table(*CONTRACT_TABLE)

    assert set(documented) == set(raisable)
    for code, statuses in documented.items():
        assert not raisable[code] or raisable[code] & statuses, f"contract: {code} is {raisable[code]}, not {statuses}"


def test_every_documented_details_key_is_one_a_raise_of_that_code_passes():
    raised = _raised_details()
    documented = [
        (path, match["code"], [match["key"], *re.findall(r"`(\w+)`", match["more"])])
        for path in ["README.md", "docs/contract.md"]
        for match in DOCUMENTED_DETAILS.finditer((Path(settings.BASE_DIR) / path).read_text())
    ]

    assert len(documented) >= 8  # the parser still finds what the docs say
    for path, code, keys in documented:
        missing = set(keys) - raised.get(code, set())
        assert not missing, f"{path} says {code} carries details.{', '.join(sorted(missing))}; the code does not"


def test_every_status_and_code_named_in_the_prose_and_endpoint_tables_is_answered():
    raisable = _raisable()
    for path in ["README.md", "docs/contract.md"]:
        named = STATUS_AND_CODE.findall((Path(settings.BASE_DIR) / path).read_text())
        assert named
        for status, code in named:
            assert code in raisable, f"{path} names {status} {code}, which nothing raises"
            assert not raisable[code] or int(status) in raisable[code], f"{path}: {code} is {raisable[code]}"


def test_the_details_parser_would_have_caught_defect_8():
    """README once said ``seats_unavailable`` carries ``details.seats``: the check above refuses that."""
    match = DOCUMENTED_DETAILS.search("| 409 `seats_unavailable` (`details.seats`) |")

    assert (match["code"], match["key"]) == ("seats_unavailable", "seats")
    assert "seats" not in _raised_details()["seats_unavailable"]
